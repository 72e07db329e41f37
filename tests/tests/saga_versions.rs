//! Saga definition versions declared with `#[saga(version = ..)]`, on PostgreSQL: a deploy that
//! inserts a step keeps the old version registered, and sagas started on it finish on it; a
//! deploy without it parks them as failed with the reason; two registrations of one name and
//! version are refused. (The same scenarios run on both backends with built definitions in the
//! saga contract suite, `tests/sagas.rs`.)

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::saga::{
    Saga, SagaError, SagaEvent, SagaOrchestrator, SagaStatus, StepError, WorkerOptions,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A shipment as version 1 knew it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShipmentV1 {
    /// The steps and compensations that ran.
    pub ran: Vec<String>,
}

#[dtx::saga(name = "Shipment")]
#[allow(clippy::unused_async, reason = "the steps do no I/O")]
impl ShipmentV1 {
    #[step(compensate = release)]
    async fn reserve(&mut self) -> Result<(), StepError> {
        self.ran.push("v1 reserve".into());
        Ok(())
    }

    async fn release(&mut self) -> Result<(), StepError> {
        self.ran.push("v1 release".into());
        Ok(())
    }

    #[step(await_event = "Approved", await_timeout_secs = 600)]
    async fn charge(&mut self) -> Result<(), StepError> {
        self.ran.push("v1 charge".into());
        Ok(())
    }

    #[step]
    async fn ship(&mut self) -> Result<(), StepError> {
        self.ran.push("v1 ship".into());
        Ok(())
    }
}

/// The shipment of version 2: a fraud check between reserving and charging.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Shipment {
    /// The steps and compensations that ran.
    pub ran: Vec<String>,
}

#[dtx::saga(name = "Shipment", version = 2)]
#[allow(clippy::unused_async, reason = "the steps do no I/O")]
impl Shipment {
    #[step(compensate = release)]
    async fn reserve(&mut self) -> Result<(), StepError> {
        self.ran.push("v2 reserve".into());
        Ok(())
    }

    async fn release(&mut self) -> Result<(), StepError> {
        self.ran.push("v2 release".into());
        Ok(())
    }

    #[step]
    async fn check_fraud(&mut self) -> Result<(), StepError> {
        self.ran.push("v2 check_fraud".into());
        Ok(())
    }

    #[step(await_event = "Approved", await_timeout_secs = 600)]
    async fn charge(&mut self) -> Result<(), StepError> {
        self.ran.push("v2 charge".into());
        Ok(())
    }

    #[step]
    async fn ship(&mut self) -> Result<(), StepError> {
        self.ran.push("v2 ship".into());
        Ok(())
    }
}

/// Two declarations of one name and version, by mistake.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Refund;

#[dtx::saga(name = "Refund", version = 3)]
#[allow(clippy::unused_async, reason = "the steps do no I/O")]
impl Refund {
    #[step]
    async fn pay_back(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

/// The same refund, declared again under the same version.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RefundAgain;

#[dtx::saga(name = "Refund", version = 3)]
#[allow(clippy::unused_async, reason = "the steps do no I/O")]
impl RefundAgain {
    #[step]
    async fn pay_back(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

/// One deploy on the database of `pool`: an orchestrator with these definitions registered.
fn deploy(
    store: &Arc<dtx_postgres::PgSagaStore>,
    register: impl FnOnce(dtx::saga::SagaOrchestratorBuilder) -> dtx::saga::SagaOrchestratorBuilder,
) -> SagaOrchestrator {
    register(SagaOrchestrator::builder(
        Arc::clone(store) as Arc<dyn dtx::saga::SagaStore>
    ))
    .build()
    .unwrap()
}

async fn run(orchestrator: &SagaOrchestrator) {
    orchestrator
        .worker(WorkerOptions::default())
        .run_until_idle()
        .await
        .unwrap();
}

fn ran(orchestrator_record: &dtx::saga::SagaRecord) -> Vec<String> {
    serde_json::from_value::<Shipment>(orchestrator_record.data.clone())
        .unwrap()
        .ran
}

/// Version 1 deployed alone starts a saga, which waits for `Approved` after `charge`.
async fn started_on_v1(store: &Arc<dtx_postgres::PgSagaStore>) -> uuid::Uuid {
    let v1_only = deploy(store, |b| b.saga(ShipmentV1::definition()));
    let id = v1_only.start(ShipmentV1::default()).await.unwrap();
    run(&v1_only).await;
    let saga = v1_only.status(id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Waiting, "{:?}", saga.last_error);
    assert_eq!(saga.definition_version, 1);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_started_on_v1_finishes_on_v1_after_v2_is_deployed() {
    assert_eq!((ShipmentV1::VERSION, Shipment::VERSION), (1, 2));
    let pool = tests::pg_store().await.pool().clone();
    let store = Arc::new(dtx_postgres::PgSagaStore::new(pool));
    let id = started_on_v1(&store).await;

    // The deploy that inserts `check_fraud` keeps version 1 registered.
    let both = deploy(&store, |b| {
        b.saga(ShipmentV1::definition())
            .saga(Shipment::definition())
    });
    both.handle_event(id, SagaEvent::new("Approved", &()).unwrap())
        .await
        .unwrap();
    run(&both).await;
    let saga = both.status(id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", saga.last_error);
    assert_eq!(ran(&saga), ["v1 reserve", "v1 charge", "v1 ship"]);

    // New sagas start on version 2; version 1's type cannot start one any more.
    let new = both.start(Shipment::default()).await.unwrap();
    run(&both).await;
    let saga = both.status(new).await.unwrap();
    assert_eq!(saga.definition_version, 2);
    assert_eq!(ran(&saga), ["v2 reserve", "v2 check_fraud", "v2 charge"]);
    let refused = both.start(ShipmentV1::default()).await;
    assert!(
        matches!(
            refused,
            Err(SagaError::Superseded {
                name: "Shipment",
                version: 1,
                latest: 2
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_started_on_v1_is_parked_when_v1_is_gone() {
    let pool = tests::pg_store().await.pool().clone();
    let store = Arc::new(dtx_postgres::PgSagaStore::new(pool));
    let id = started_on_v1(&store).await;

    let v2_only = deploy(&store, |b| b.saga(Shipment::definition()));
    v2_only
        .handle_event(id, SagaEvent::new("Approved", &()).unwrap())
        .await
        .unwrap();
    run(&v2_only).await;
    let saga = v2_only.status(id).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(ran(&saga), ["v1 reserve", "v1 charge"], "no step of v2 ran");
    let error = saga.last_error.unwrap_or_default();
    let v1 = ShipmentV1::definition().fingerprint();
    let v2 = Shipment::definition().fingerprint();
    assert_eq!(
        error,
        format!(
            "saga `Shipment` {id} started on version 1 (fingerprint {v1}); version 1 is no \
             longer registered. Registered versions: 2 (fingerprint {v2}). It was parked \
             without running a step of another version: register version 1 with its original \
             steps again, then `retry` compensates it under that version"
        )
    );
    assert!(
        v2_only
            .list(SagaStatus::Failed, 10)
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == id),
        "an operator finds it"
    );

    // The operator deploys version 1 again and retries: it is compensated under version 1.
    let both = deploy(&store, |b| {
        b.saga(ShipmentV1::definition())
            .saga(Shipment::definition())
    });
    both.retry(id).await.unwrap();
    run(&both).await;
    let saga = both.status(id).await.unwrap();
    assert_eq!(
        saga.status,
        SagaStatus::Compensated,
        "{:?}",
        saga.last_error
    );
    assert_eq!(ran(&saga), ["v1 reserve", "v1 charge", "v1 release"]);
}

#[test]
fn two_registrations_of_one_name_and_version_are_refused() {
    let error = SagaOrchestrator::builder(Arc::new(dtx::saga::MemorySagaStore::new()))
        .registry()
        .build()
        .expect_err("`Refund` version 3 is declared twice");
    assert!(
        matches!(
            error,
            SagaError::DuplicateSaga {
                name: "Refund",
                version: 3
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "saga `Refund` version 3 is registered twice: give the newer definition the next \
         version (`#[saga(version = ..)]`, `SagaBuilder::version`)"
    );
    // Versions 1 and 2 of one name are not a duplicate.
    SagaOrchestrator::builder(Arc::new(dtx::saga::MemorySagaStore::new()))
        .saga(ShipmentV1::definition())
        .saga(Shipment::definition())
        .build()
        .unwrap();
}

//! The saga contract suite on both backends.

mod memory {
    dtx::saga_contract_tests!((
        std::sync::Arc::new(dtx::saga::MemorySagaStore::new())
            as std::sync::Arc<dyn dtx::saga::SagaStore>,
        std::sync::Arc::new(dtx::MemoryEventStore::new()) as dtx::SharedEventStore
    ));
}

mod postgres {
    dtx::saga_contract_tests!(tests::pg_saga_stores().await);
}

/// A saga started inside the caller's transaction exists if and only if that transaction
/// commits, together with the caller's events.
#[tokio::test]
async fn start_inside_the_callers_transaction() {
    use dtx::saga::testing::contract::Fulfil;
    use dtx::saga::{Saga, SagaOrchestrator, SagaStatus, WorkerOptions};
    use dtx::testing::Credited;
    use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
    use std::sync::Arc;

    let events = tests::pg_store().await;
    let sagas_store = dtx_postgres::PgSagaStore::new(events.pool().clone());
    let sagas = SagaOrchestrator::builder(Arc::new(sagas_store.clone()))
        .events(Arc::new(events.clone()))
        .saga(Fulfil::definition())
        .build()
        .unwrap();
    let stream = StreamId::new("Order-tx-1").unwrap();
    let event = || NewEvent::from_json("Credited", &Credited { amount: 1 }).unwrap();

    // Rolled back: neither the events nor the saga exist.
    let record = sagas.prepare(&Fulfil::default(), None).unwrap();
    let mut tx = events.pool().begin().await.unwrap();
    events
        .append_in(&mut tx, &stream, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    sagas_store.insert_in(&mut tx, &record).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(events.stream_version(&stream).await.unwrap(), 0);
    assert!(matches!(
        sagas.status(record.id).await,
        Err(dtx::saga::SagaError::NotFound { .. })
    ));

    // Committed: both exist, and a worker runs the saga.
    let record = sagas.prepare(&Fulfil::default(), None).unwrap();
    let mut tx = events.pool().begin().await.unwrap();
    events
        .append_in(&mut tx, &stream, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    sagas_store.insert_in(&mut tx, &record).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(events.stream_version(&stream).await.unwrap(), 1);
    sagas
        .worker(WorkerOptions::default())
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!(
        sagas.status(record.id).await.unwrap().status,
        SagaStatus::Completed
    );
}

/// A saga built with `SagaBuilder` starts through the handle its definition gives, without a
/// `Saga` impl; an orchestrator without it refuses the handle by name.
#[tokio::test]
async fn builder_saga_starts_through_its_handle() {
    use dtx::saga::{
        MemorySagaStore, SagaBuilder, SagaError, SagaOrchestrator, SagaStatus, StepContext,
        WorkerOptions,
    };
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Transfer {
        debited: bool,
    }

    let transfer = SagaBuilder::<Transfer>::new("HandleTransfer")
        .add_step("DEBIT", |t: &mut Transfer, _: &StepContext| {
            Box::pin(async move {
                t.debited = true;
                Ok(vec![])
            })
        })
        .build()
        .unwrap();
    let handle = transfer.handle();
    assert_eq!(handle.name(), "HandleTransfer");

    let without = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
        .build()
        .unwrap();
    assert!(matches!(
        handle.start(&without, Transfer::default()).await,
        Err(SagaError::UnknownSaga { name }) if name == "HandleTransfer"
    ));

    let sagas = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
        .saga(transfer)
        .build()
        .unwrap();
    let id = handle.start(&sagas, Transfer::default()).await.unwrap();
    sagas
        .worker(WorkerOptions::default())
        .run_until_idle()
        .await
        .unwrap();
    let record = sagas.status(id).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(record.data["debited"], true);
}

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
    use dtx::saga::SagaStore as _;
    use dtx::saga::testing::contract::Fulfil;
    use dtx::saga::{Saga, SagaOrchestrator, SagaStatus, WorkerOptions};
    use dtx::testing::Credited;
    use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, UnitOfWork as _};
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
    let mut tx = dtx_postgres::PgUnitOfWork::begin(events.pool())
        .await
        .unwrap();
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
    let mut tx = dtx_postgres::PgUnitOfWork::begin(events.pool())
        .await
        .unwrap();
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

/// The store works in a named schema, whose sagas are apart from the default schema's (claims
/// and lists included); the name is validated.
#[tokio::test]
async fn works_in_a_schema() {
    use dtx::saga::{SagaRecord, SagaStatus, SagaStore};
    use dtx_postgres::PgSagaStore;
    use sqlx::types::chrono;
    use std::time::Duration;

    let events = tests::pg_store().await;
    dtx_postgres::migrate_in_schema(events.pool(), "tenant_s")
        .await
        .unwrap();
    let tenant = PgSagaStore::new(events.pool().clone())
        .with_schema("tenant_s")
        .unwrap();
    let public = PgSagaStore::new(events.pool().clone());
    let now = chrono::Utc::now();
    let record = SagaRecord::new("Fulfil", serde_json::json!({"order": 1}), now, None, None);
    tenant.insert(&record).await.unwrap();

    assert_eq!(tenant.get(record.id).await.unwrap().unwrap().id, record.id);
    assert!(
        public.get(record.id).await.unwrap().is_none(),
        "schemas are separate"
    );
    assert!(
        public
            .list(SagaStatus::Running, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        public
            .claim("w", now, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = tenant
        .claim("w", now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, record.id);
    // The same saga id can live in both schemas.
    public.insert(&record).await.unwrap();
    assert_eq!(
        public.counts().await.unwrap().get(&SagaStatus::Running),
        Some(&1)
    );

    assert!(matches!(
        PgSagaStore::new(events.pool().clone()).with_schema("x\"; DROP TABLE saga_state; --"),
        Err(dtx::Error::Invalid {
            what: "schema name",
            ..
        })
    ));
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

//! The event-store contract suite on both backends, plus PostgreSQL-specific guarantees.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

mod memory {
    dtx::event_store_contract_tests!(dtx::MemoryEventStore::new());

    /// Units of work of the in-memory backend.
    fn begin() -> dtx::testing::BeginUnitOfWork {
        std::sync::Arc::new(|| {
            Box::pin(async { Box::new(dtx::MemoryUnitOfWork::new()) as Box<dyn dtx::UnitOfWork> })
        })
    }

    dtx::unit_of_work_contract_tests!((dtx::MemoryEventStore::new(), begin()));
}

mod postgres {
    // Concurrent appends combined, one statement in flight (the default).
    dtx::event_store_contract_tests!(tests::pg_store().await);

    /// A store on a pool of one connection, and units of work on that pool: a unit of work that
    /// needed a second connection would wait for the one it holds.
    async fn on_one_connection() -> (dtx_postgres::PgEventStore, dtx::testing::BeginUnitOfWork) {
        let pool = dtx_postgres::testing::fresh_database(1).await.unwrap();
        let begin_on = pool.clone();
        let begin: dtx::testing::BeginUnitOfWork = std::sync::Arc::new(move || {
            let pool = begin_on.clone();
            Box::pin(async move {
                Box::new(dtx_postgres::PgUnitOfWork::begin(&pool).await.unwrap())
                    as Box<dyn dtx::UnitOfWork>
            })
        });
        (dtx_postgres::PgEventStore::new(pool), begin)
    }

    dtx::unit_of_work_contract_tests!(on_one_connection().await);
}

/// The contract with every append alone.
mod postgres_alone {
    dtx::event_store_contract_tests!(
        tests::pg_store()
            .await
            .with_combining(dtx_postgres::Combining::off())
    );
}

/// The contract with two statements in flight: an append arriving while a slot is free goes
/// alone, later ones together.
mod postgres_two_in_flight {
    dtx::event_store_contract_tests!(
        tests::pg_store()
            .await
            .with_combining(dtx_postgres::Combining::on().max_in_flight(2))
    );
}

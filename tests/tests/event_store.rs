//! The event-store contract suite on both backends, plus PostgreSQL-specific guarantees.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

mod memory {
    dtx::event_store_contract_tests!(dtx::MemoryEventStore::new());
}

mod postgres {
    dtx::event_store_contract_tests!(tests::pg_store().await);
}

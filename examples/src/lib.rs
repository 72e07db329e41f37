//! Shared pieces of the dtx examples: the order domain, its summary read model, the
//! fulfillment saga, and backend selection.

pub mod fulfillment;
pub mod order;
pub mod order_summaries;
pub mod two_services;

use dtx::projection::{MemoryCheckpointStore, SharedCheckpointStore};
use dtx::saga::{MemorySagaStore, SagaStore};
use dtx::{DtxConfig, MemoryEventStore, SharedEventStore};
use order_summaries::OrderSummaries;
use std::sync::Arc;

/// The stores the examples run on.
pub struct Backend {
    /// Events.
    pub events: SharedEventStore,
    /// Sagas.
    pub sagas: Arc<dyn SagaStore>,
    /// Projection checkpoints, committed with the read models' writes.
    pub checkpoints: SharedCheckpointStore,
    /// The order-summary read model.
    pub order_summaries: OrderSummaries,
    /// `"PostgreSQL"` or `"in-memory"`.
    pub name: &'static str,
}

/// PostgreSQL when `DATABASE_URL` is set (migrated on start, the read model's table created),
/// otherwise the in-memory default.
pub async fn backend_from_env() -> Result<Backend, Box<dyn std::error::Error>> {
    let config = DtxConfig::from_env()?;
    match config.database_url {
        Some(url) => {
            let pool = dtx_postgres::sqlx::PgPool::connect(&url).await?;
            dtx_postgres::migrate(&pool).await?;
            Ok(Backend {
                events: Arc::new(dtx_postgres::PgEventStore::new(pool.clone())),
                sagas: Arc::new(dtx_postgres::PgSagaStore::new(pool.clone())),
                checkpoints: Arc::new(dtx_postgres::PgCheckpointStore::new(pool.clone())),
                order_summaries: OrderSummaries::postgres(pool).await?,
                name: "PostgreSQL",
            })
        }
        None => Ok(Backend {
            events: Arc::new(MemoryEventStore::new()),
            sagas: Arc::new(MemorySagaStore::new()),
            checkpoints: Arc::new(MemoryCheckpointStore::new()),
            order_summaries: OrderSummaries::in_memory(),
            name: "in-memory",
        }),
    }
}

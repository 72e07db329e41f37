//! Shared pieces of the dtx examples: the order domain, the fulfillment saga, and backend
//! selection.

pub mod fulfillment;
pub mod order;

use dtx::saga::{MemorySagaStore, SagaStore};
use dtx::{DtxConfig, MemoryEventStore, SharedEventStore};
use std::sync::Arc;

/// The stores the examples run on.
pub struct Backend {
    /// Events.
    pub events: SharedEventStore,
    /// Sagas.
    pub sagas: Arc<dyn SagaStore>,
    /// `"PostgreSQL"` or `"in-memory"`.
    pub name: &'static str,
}

/// PostgreSQL when `DATABASE_URL` is set (migrated on start), otherwise the in-memory default.
pub async fn backend_from_env() -> Result<Backend, Box<dyn std::error::Error>> {
    let config = DtxConfig::from_env()?;
    match config.database_url {
        Some(url) => {
            let pool = dtx_postgres::sqlx::PgPool::connect(&url).await?;
            dtx_postgres::migrate(&pool).await?;
            Ok(Backend {
                events: Arc::new(dtx_postgres::PgEventStore::new(pool.clone())),
                sagas: Arc::new(dtx_postgres::PgSagaStore::new(pool)),
                name: "PostgreSQL",
            })
        }
        None => Ok(Backend {
            events: Arc::new(MemoryEventStore::new()),
            sagas: Arc::new(MemorySagaStore::new()),
            name: "in-memory",
        }),
    }
}

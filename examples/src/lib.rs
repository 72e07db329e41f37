//! Shared pieces of the dtx examples: the order domain and backend selection.

pub mod order;

use dtx::{DtxConfig, MemoryEventStore, SharedEventStore};
use std::sync::Arc;

/// The event store the examples run on: PostgreSQL when `DATABASE_URL` is set (migrated on
/// start), otherwise the in-memory default.
pub async fn store_from_env() -> Result<(SharedEventStore, &'static str), Box<dyn std::error::Error>>
{
    let config = DtxConfig::from_env()?;
    match config.database_url {
        Some(url) => {
            let pool = dtx_postgres::sqlx::PgPool::connect(&url).await?;
            dtx_postgres::migrate(&pool).await?;
            Ok((
                Arc::new(dtx_postgres::PgEventStore::new(pool)),
                "PostgreSQL",
            ))
        }
        None => Ok((Arc::new(MemoryEventStore::new()), "in-memory")),
    }
}

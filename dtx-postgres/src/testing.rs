//! Test helpers (feature `testing`): a fresh, migrated database per test.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use std::str::FromStr;

/// The server used by tests: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates a database named `dtx_test_<uuid>` on the test server, applies the migrations and
/// returns a pool of up to `max_connections` on it.
///
/// The databases are left behind for inspection; `scripts/test.sh` drops them before each run.
pub async fn fresh_database(max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let admin_options = PgConnectOptions::from_str(&database_url())?;
    let name = format!("dtx_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = admin_options.connect().await?;
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await?;
    admin.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(admin_options.database(&name))
        .await?;
    crate::migrate(&pool)
        .await
        .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    Ok(pool)
}

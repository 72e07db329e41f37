use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, PgPool};
use std::borrow::Cow;
use std::sync::LazyLock;

macro_rules! migrations {
    ($($version:literal $name:literal $description:literal),* $(,)?) => {
        [$(Migration::new(
            $version,
            Cow::Borrowed($description),
            MigrationType::Simple,
            Cow::Borrowed(include_str!(concat!("../../migrations/", stringify!($version), "_", $name, ".sql"))),
            false,
        )),*]
    };
}

/// The embedded migrations in `migrations/`, in the format `sqlx migrate run` applies too (the
/// two share the `_sqlx_migrations` bookkeeping, so either can run first).
#[allow(clippy::unreadable_literal, reason = "versions match the file names")]
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| Migrator {
    migrations: Cow::Owned(
        migrations![
            20261123000001 "event_store" "event store",
            20261123000002 "event_snapshots" "event snapshots",
            20261123000003 "saga_state" "saga state",
            20261123000004 "idempotency_keys" "idempotency keys",
            20261123000005 "outbox_events" "outbox events",
        ]
        .to_vec(),
    ),
    ignore_missing: false,
    locking: true,
    no_tx: false,
});

/// Applies dtx's migrations to the database (idempotent; concurrent callers wait on a lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Applies dtx's migrations inside a schema (created if missing), for
/// [`crate::PgEventStore::with_schema`].
pub async fn migrate_in_schema(
    pool: &PgPool,
    schema: &str,
) -> Result<(), sqlx::migrate::MigrateError> {
    let quoted = crate::quote_identifier(schema)
        .map_err(|e| sqlx::migrate::MigrateError::Source(Box::new(e)))?;
    let mut conn = pool.acquire().await?;
    conn.execute(format!("CREATE SCHEMA IF NOT EXISTS {quoted}").as_str())
        .await?;
    conn.execute(format!("SET search_path TO {quoted}").as_str())
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    // Never hand a connection with a foreign search_path back to the pool.
    let reset = conn.execute("RESET search_path").await;
    if reset.is_err() {
        conn.detach();
    }
    result
}

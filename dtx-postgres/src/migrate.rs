use sqlx::migrate::Migrator;
use sqlx::{Executor, PgPool};

/// Every file in the crate's `migrations/` folder, embedded at compile time (`build.rs` rebuilds
/// the crate when a file is added), in the format `sqlx migrate run` applies too: the two share
/// the `_sqlx_migrations` bookkeeping, so either can run first.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

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

#[cfg(test)]
mod tests {
    use super::MIGRATOR;

    /// Every `.sql` file of the folder is embedded, and nothing else.
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("the migrations folder")
            .map(|entry| entry.expect("a folder entry").file_name())
            .filter_map(|name| name.to_str()?.strip_suffix(".sql").map(str::to_owned))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATOR
            .iter()
            .map(|m| format!("{}_{}", m.version, m.description.replace(' ', "_")))
            .collect();
        assert_eq!(files, embedded);
        assert!(!embedded.is_empty());
    }
}

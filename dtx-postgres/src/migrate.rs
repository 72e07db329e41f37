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

/// Where one of dtx's migrations stands in a database, as [`migration_status`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationState {
    /// Its version (the file name's number).
    pub version: i64,
    /// What it does (the rest of the file name).
    pub description: String,
    /// When it was applied; `None` while pending.
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether the applied SQL differs from this build's file (`false` while pending): someone
    /// edited a migration after it ran, and `migrate` refuses to go on.
    pub changed: bool,
    /// Whether this build knows it: `false` for a migration a newer build applied.
    pub known: bool,
}

impl MigrationState {
    /// Whether it is still to apply.
    pub fn pending(&self) -> bool {
        self.applied_at.is_none()
    }
}

/// Every migration this build embeds, and any other the database recorded, by version: which
/// are applied (when), pending, or changed since they ran. `schema` as for
/// [`migrate_in_schema`] (`None`: the tables the `search_path` finds). Reads only.
pub async fn migration_status(
    pool: &PgPool,
    schema: Option<&str>,
) -> Result<Vec<MigrationState>, sqlx::migrate::MigrateError> {
    let table = match schema {
        Some(schema) => format!(
            "{}._sqlx_migrations",
            crate::quote_identifier(schema)
                .map_err(|e| sqlx::migrate::MigrateError::Source(Box::new(e)))?
        ),
        None => "_sqlx_migrations".to_owned(),
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await?;
    let applied: Vec<(i64, String, chrono::DateTime<chrono::Utc>, Vec<u8>)> = if exists {
        sqlx::query_as(&format!(
            "SELECT version, description, installed_on, checksum FROM {table}
             WHERE success ORDER BY version"
        ))
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    let mut states: Vec<MigrationState> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let done = applied.iter().find(|a| a.0 == m.version);
            MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied_at: done.map(|a| a.2),
                changed: done.is_some_and(|a| a.3 != *m.checksum),
                known: true,
            }
        })
        .collect();
    for (version, description, applied_at, _) in applied {
        if !states.iter().any(|s| s.version == version) {
            states.push(MigrationState {
                version,
                description,
                applied_at: Some(applied_at),
                changed: false,
                known: false,
            });
        }
    }
    states.sort_by_key(|s| s.version);
    Ok(states)
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

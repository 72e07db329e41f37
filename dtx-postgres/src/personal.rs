//! [`PgSubjectKeys`]: the subjects' keys of personal data in the `subject_keys` table.

use crate::sql::Schema;
use async_trait::async_trait;
use dtx::personal::SubjectKeys;
use dtx::{Error, Result};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;

/// The keys of personal data's subjects (see [`dtx::personal`]) in the `subject_keys` table:
/// what [`PgEventStore`](crate::PgEventStore) seals and opens personal values with. Every
/// statement runs on the pool, outside any unit of work: a key made for an append commits
/// before the append, and a [`forget`](SubjectKeys::forget) is one `DELETE` that commits
/// alone.
#[derive(Clone)]
pub struct PgSubjectKeys {
    pool: PgPool,
    sql: Arc<Statements>,
}

struct Statements {
    get_or_insert: String,
    get_many: String,
    forget: String,
}

impl std::fmt::Debug for PgSubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSubjectKeys").finish_non_exhaustive()
    }
}

impl PgSubjectKeys {
    /// The keys on `pool`, in the table the connection's `search_path` finds.
    pub fn new(pool: PgPool) -> Self {
        Self::in_schema(pool, &Schema::default())
    }

    /// The keys in the `subject_keys` table of `schema` (validated and quoted).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a schema name that is not an identifier.
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::in_schema(pool, &Schema::named(schema)?))
    }

    pub(crate) fn in_schema(pool: PgPool, schema: &Schema) -> Self {
        let keys = schema.table("subject_keys");
        Self {
            pool,
            sql: Arc::new(Statements {
                // One statement for a race of two writers: the second one's `DO UPDATE` returns
                // the key the first one stored (a `DO NOTHING` would return nothing).
                get_or_insert: format!(
                    "INSERT INTO {keys} (subject, key) VALUES ($1, $2) \
                     ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject \
                     RETURNING key"
                ),
                get_many: format!("SELECT subject, key FROM {keys} WHERE subject = ANY($1)"),
                forget: format!("DELETE FROM {keys} WHERE subject = $1"),
            }),
        }
    }

    /// Every statement this key store issues, by name, for `EXPLAIN` checks and audits.
    pub fn statements(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("subject_key", self.sql.get_or_insert.as_str()),
            ("subject_keys", &self.sql.get_many),
            ("forget_subject", &self.sql.forget),
        ]
    }
}

#[async_trait]
impl SubjectKeys for PgSubjectKeys {
    async fn get_or_insert(&self, subject: &str, new: Vec<u8>) -> Result<Vec<u8>> {
        sqlx::query_scalar(&self.sql.get_or_insert)
            .bind(subject)
            .bind(new)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)
    }

    async fn get_many(&self, subjects: &[String]) -> Result<HashMap<String, Vec<u8>>> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(&self.sql.get_many)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(rows.into_iter().collect())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let done = sqlx::query(&self.sql.forget)
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(done.rows_affected() > 0)
    }
}

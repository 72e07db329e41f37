//! Retention on PostgreSQL: [`PgPurger`] deletes what a [`RetentionPolicy`] says is due, for a
//! [`Retention`] to run once or in the background.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> dtx::Result<()> {
//! use dtx_postgres::retention::{PgPurger, Retention, RetentionPolicy};
//!
//! let retention = Retention::new(RetentionPolicy::default(), PgPurger::new(pool));
//! let report = retention.purge_once().await?;
//! println!("purged {} rows", report.total());
//! let task = retention.spawn(); // a pass every RetentionPolicy::every
//! # task.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! Every batch is one statement and its own transaction: it picks at most
//! [`RetentionPolicy::batch`] due rows through an index (`saga_state_status`,
//! `outbox_published_at`, `inbox_messages_received_at`, `idempotency_keys_expiry`), locks them
//! with `FOR UPDATE SKIP LOCKED` (a row a worker, relay or request holds is left for the next
//! pass) and deletes them by their row address. No statement takes a table lock beyond the row
//! locks of its batch.

pub use dtx::retention::{
    PurgeReport, Purger, Retention, RetentionKind, RetentionPolicy, RetentionTask,
};

use crate::sql::{Schema, count, millis};
use async_trait::async_trait;
use dtx::{Error, Result};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// The [`Purger`] of the dtx tables on PostgreSQL. Clones share the pool.
#[derive(Clone)]
pub struct PgPurger {
    pool: PgPool,
    sql: Arc<PurgeSql>,
}

impl std::fmt::Debug for PgPurger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPurger").finish_non_exhaustive()
    }
}

/// A kind's statements: the batch delete and the count of what is due.
struct KindSql {
    purge: String,
    due: String,
}

/// The statements, by kind, built once per schema.
struct PurgeSql {
    sagas: KindSql,
    outbox: KindSql,
    inbox: KindSql,
    keys: KindSql,
}

/// A kind's statements over `table` for the rows matching `due` (`$1`: the age in
/// milliseconds, and for sagas `$3`: the statuses), oldest first by `order`.
fn kind(table: &str, due: &str, order: &str) -> KindSql {
    KindSql {
        purge: format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM {table} WHERE {due}
                 ORDER BY {order} LIMIT $2
                 FOR UPDATE SKIP LOCKED))"
        ),
        // The same rows, counted: the statuses are `$2` here.
        due: format!(
            "SELECT count(*) FROM {table} WHERE {}",
            due.replace("$3", "$2")
        ),
    }
}

impl PurgeSql {
    fn new(schema: &Schema) -> Self {
        let cutoff = "now() - $1 * interval '1 millisecond'";
        Self {
            // A saga created after the cutoff cannot have finished before it: the condition on
            // created_at bounds the range of saga_state_status (status, created_at) it scans.
            sagas: kind(
                &schema.table("saga_state"),
                &format!(
                    "status = ANY ($3::text[]) AND created_at < {cutoff} AND updated_at < {cutoff}"
                ),
                "status, created_at",
            ),
            outbox: kind(
                &schema.table("outbox_published"),
                &format!("published_at < {cutoff}"),
                "published_at",
            ),
            inbox: kind(
                &schema.table("inbox_messages"),
                &format!("received_at < {cutoff}"),
                "received_at",
            ),
            keys: kind(
                &schema.table("idempotency_keys"),
                &format!(
                    "expires_at <= {cutoff} AND (status = 'completed' OR locked_until <= now())"
                ),
                "expires_at",
            ),
        }
    }

    fn of(&self, kind: RetentionKind) -> &KindSql {
        match kind {
            RetentionKind::FinishedSagas | RetentionKind::FailedSagas => &self.sagas,
            RetentionKind::PublishedOutbox => &self.outbox,
            RetentionKind::Inbox => &self.inbox,
            RetentionKind::IdempotencyKeys => &self.keys,
        }
    }
}

fn is_saga(kind: RetentionKind) -> bool {
    matches!(
        kind,
        RetentionKind::FinishedSagas | RetentionKind::FailedSagas
    )
}

/// The saga statuses of `kind`.
fn statuses(kind: RetentionKind) -> Vec<&'static str> {
    match kind {
        RetentionKind::FinishedSagas => vec!["completed", "compensated"],
        RetentionKind::FailedSagas => vec!["failed"],
        _ => Vec::new(),
    }
}

impl PgPurger {
    /// A purger of the tables the pool's `search_path` finds.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(PurgeSql::new(&Schema::default())),
        }
    }

    /// Purges the tables in `schema` (see [`crate::migrate_in_schema`]); the name is validated
    /// and quoted.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.sql = Arc::new(PurgeSql::new(&Schema::named(schema)?));
        Ok(self)
    }

    /// Every statement, by name, for `EXPLAIN` checks.
    pub fn statements(&self) -> Vec<(String, &str)> {
        [
            RetentionKind::FinishedSagas,
            RetentionKind::PublishedOutbox,
            RetentionKind::Inbox,
            RetentionKind::IdempotencyKeys,
        ]
        .into_iter()
        .flat_map(|kind| {
            let sql = self.sql.of(kind);
            [
                (format!("purge_{kind}"), sql.purge.as_str()),
                (format!("due_{kind}"), sql.due.as_str()),
            ]
        })
        .collect()
    }
}

#[async_trait]
impl Purger for PgPurger {
    async fn purge_batch(&self, kind: RetentionKind, age: Duration, limit: usize) -> Result<u64> {
        let query = sqlx::query(&self.sql.of(kind).purge)
            .bind(millis(age))
            .bind(count(limit));
        let query = if is_saga(kind) {
            query.bind(statuses(kind))
        } else {
            query
        };
        let done = query.execute(&self.pool).await.map_err(Error::storage)?;
        Ok(done.rows_affected())
    }

    async fn due(&self, kind: RetentionKind, age: Duration) -> Result<u64> {
        let query = sqlx::query_scalar::<_, i64>(&self.sql.of(kind).due).bind(millis(age));
        let query = if is_saga(kind) {
            query.bind(statuses(kind))
        } else {
            query
        };
        let due = query.fetch_one(&self.pool).await.map_err(Error::storage)?;
        Ok(u64::try_from(due).unwrap_or(0))
    }
}

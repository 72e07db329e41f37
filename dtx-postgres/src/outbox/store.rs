//! [`PgOutbox`]: adding messages, status, dead letters and retention.

use super::message::{MessageRow, missing_checkpoint};
use super::relay::OutboxRelay;
use super::sql::OutboxSql;
use crate::restore::FeedGuard;
use crate::sql::{Schema, count, to_u64};
use dtx::outbox::{NewOutboxMessage, OutboxCounts, OutboxMessage, Publisher, RelayOptions};
use dtx::{Error, Result};
use sqlx::PgConnection;
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// The outbox tables on PostgreSQL: adding messages in a transaction, status, dead letters and
/// retention. Create relays with [`PgOutbox::relay`]. Clones share the pool.
#[derive(Clone)]
pub struct PgOutbox {
    pub(super) pool: PgPool,
    pub(super) sql: Arc<OutboxSql>,
    /// The check before a relay's first pass that the feed is not ahead of the transaction ids
    /// (see [`crate::check_feed`]), shared by the relays of this outbox.
    pub(super) guard: FeedGuard,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox").finish_non_exhaustive()
    }
}

/// The row of the `counts` statement.
#[derive(sqlx::FromRow)]
struct CountsRow {
    pending: i64,
    dead: i64,
    /// The age of the oldest pending message, in seconds.
    lag: Option<f64>,
    published: i64,
    /// Whether the feed's checkpoint is there.
    checkpoint: bool,
}

impl PgOutbox {
    /// The outbox on a migrated database (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(OutboxSql::new(&Schema::default())),
            guard: FeedGuard::new(&Schema::default()),
        }
    }

    /// Uses the tables in `schema` (see [`crate::migrate_in_schema`]); the name is validated and
    /// quoted.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        let named = Schema::named(schema)?;
        self.guard = FeedGuard::new(&named);
        self.sql = Arc::new(OutboxSql::new(&named));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every statement the outbox and its relays issue, by name, for `EXPLAIN` checks.
    pub fn statements(&self) -> [(&'static str, &str); 13] {
        self.sql.named()
    }

    /// Adds messages inside the caller's transaction (or on any connection), in one statement:
    /// they are published only if it commits.
    ///
    /// # Errors
    /// [`Error::Invalid`] (nothing is added) when a key is no valid stream id or a message has a
    /// header that breaks [`dtx::outbox::headers::check`]; the database's.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        messages: Vec<NewOutboxMessage>,
    ) -> Result<()> {
        let n = messages.len();
        let (mut keys, mut ids, mut types, mut payloads, mut headers) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for message in messages {
            dtx::StreamId::new(message.key.clone())?;
            message.check_storable()?;
            message.check_headers()?;
            headers.push(serde_json::to_string(&message.all_headers()).map_err(Error::storage)?);
            keys.push(message.key);
            ids.push(message.message_id);
            types.push(message.message_type);
            payloads.push(String::from(Box::<str>::from(message.payload)));
        }
        sqlx::query(&self.sql.enqueue)
            .bind(&keys)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .bind(&headers)
            .fetch_one(conn)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    /// Counts by status and the outbox lag (age of the oldest pending message). Pending counts
    /// the outbox events after the feed's checkpoint and the backlog table's pending rows;
    /// published, the events published from the feed and the archived messages. It reads the
    /// feed after the checkpoint, the whole backlog table and the archive: an operator's query,
    /// not one for every request.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let row: CountsRow = sqlx::query_as(&self.sql.counts)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        if !row.checkpoint {
            return Err(missing_checkpoint());
        }
        Ok(OutboxCounts {
            pending: to_u64(row.pending),
            published: to_u64(row.published),
            dead: to_u64(row.dead),
            oldest_pending_age: row.lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Up to `limit` dead-lettered messages, oldest first, with their last error.
    pub async fn dead(&self, limit: usize) -> Result<Vec<OutboxMessage>> {
        let rows: Vec<MessageRow> = sqlx::query_as(&self.sql.dead)
            .bind(count(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(rows
            .into_iter()
            .map(|row| row.into_message().unwrap_or_else(|failed| failed.message))
            .collect())
    }

    /// Puts a dead message back to pending (attempts reset) and wakes an idle relay; its key
    /// resumes in order. `false` if no dead message has this id.
    pub async fn requeue(&self, id: i64) -> Result<bool> {
        let requeued: i64 = sqlx::query_scalar(&self.sql.requeue)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(requeued == 1)
    }

    /// Puts every dead message back to pending; returns how many.
    pub async fn requeue_all_dead(&self) -> Result<u64> {
        let requeued: i64 = sqlx::query_scalar(&self.sql.requeue_all)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(to_u64(requeued))
    }

    /// Deletes published messages older than `older_than`, `batch` rows per statement (each its
    /// own short transaction), until none is left; returns how many.
    pub async fn purge_published(&self, older_than: Duration, batch: usize) -> Result<u64> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let done = sqlx::query(&self.sql.purge)
                .bind(older_than.as_secs_f64())
                .bind(count(batch))
                .execute(&self.pool)
                .await
                .map_err(Error::storage)?;
            total += done.rows_affected();
            if done.rows_affected() < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// A relay publishing this outbox through `publisher`.
    pub fn relay(&self, publisher: impl Publisher, options: RelayOptions) -> OutboxRelay {
        OutboxRelay::new(self.clone(), Arc::new(publisher), options)
    }
}

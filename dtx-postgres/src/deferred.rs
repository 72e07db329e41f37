//! [`PgDeferredUnitOfWork`]: a unit of work that stages its writes and commits them in one
//! statement, beginning a transaction only when it must.

use crate::sql::{outcome_unknown, unique_violation};
use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use dtx::uow::BoxFuture;
use dtx::{Error, Result, StreamId, UnitOfWork};
use sqlx::postgres::{PgArguments, PgConnection, PgPool, Postgres};
use std::any::Any;
use std::time::Duration;

/// The final statement of a deferred commit, with its parameters bound so far.
pub(crate) type Committing<'q> = sqlx::query::QueryScalar<'q, Postgres, i64, PgArguments>;

/// A write staged in a [`PgDeferredUnitOfWork`]: an event append, for now.
#[async_trait]
pub(crate) trait StagedWrite: Send + Sync {
    /// The stream written.
    fn stream(&self) -> &StreamId;

    /// The data-modifying statement (an `INSERT ... RETURNING`) with its parameters numbered
    /// from `$offset + 1`, how many parameters it takes, and how many rows it must return
    /// when its expectation holds.
    fn statement(&self, offset: usize) -> (String, usize, usize);

    /// Binds its parameters, in the order of [`statement`](Self::statement).
    fn bind<'q>(&'q self, query: Committing<'q>) -> Committing<'q>;

    /// Runs the write on a transaction's connection, as it would have run unstaged; an error
    /// when it no longer does what it told its caller it would.
    async fn flush(&self, conn: &mut PgConnection) -> Result<()>;

    /// The error for this write when its expectation no longer held at commit.
    async fn conflict(&self) -> Error;
}

/// The idempotency record a deferred unit of work inserts, completed, when it commits.
pub(crate) struct KeyRecord {
    /// The idempotency table, schema-qualified and quoted.
    pub(crate) table: String,
    pub(crate) scope: String,
    pub(crate) key: String,
    pub(crate) fingerprint: Vec<u8>,
    /// The record's TTL, in milliseconds.
    pub(crate) ttl_ms: f64,
    /// The stored response; `None` until it is completed (nothing is inserted then).
    pub(crate) response: Option<Vec<u8>>,
}

/// A PostgreSQL unit of work that **defers its transaction**: what dtx's stores can stage
/// (event appends through [`dtx::EventStore::append_in`] with an expected version, and the
/// completed idempotency record of the HTTP layer's one-commit mode) is kept in memory and
/// written at [`commit`](UnitOfWork::commit) by **one autocommit statement** — one round trip,
/// one commit, all of it or nothing. Reads through it go to the pool while it has staged
/// nothing they could see.
///
/// Anything it cannot stage begins a real transaction first and writes what was staged in it,
/// in order, then goes on as a [`PgUnitOfWork`] would: the caller's own SQL
/// ([`PgUnitOfWork::connection_of`]), a read of a stream it has staged events for, a snapshot,
/// an append with [`ExpectedVersion::Any`](dtx::ExpectedVersion::Any), saga starts, outbox
/// messages, inbox and checkpoint writes. Its commit then inserts the idempotency record in
/// that transaction and commits it.
///
/// A staged append answers at once with the versions its events will have (it knows them
/// from the expectation); their global positions are only known once they are committed and
/// are [`GlobalPosition::START`](dtx::GlobalPosition::START) in that answer. Whether the
/// expectation holds is checked by the commit: a stream that moved on (or a version taken by a
/// concurrent writer) fails the whole statement, nothing is committed, and the commit is
/// [`Error::Conflict`] naming the stream. An idempotency key stored meanwhile by another
/// request (completed, or in flight and then committed) fails it too, as
/// [`Error::RolledBack`]; while another request's transaction holds the key the statement waits
/// for it, up to the lock wait given when it was begun. A connection lost once the statement
/// may have reached the server is [`Error::CommitOutcomeUnknown`].
///
/// Made by `PgIdempotencyStore`'s `begin_deferred` for the HTTP layer's one-commit mode.
pub struct PgDeferredUnitOfWork {
    pool: PgPool,
    lock_wait: Duration,
    staged: Vec<Box<dyn StagedWrite>>,
    record: Option<KeyRecord>,
    begun: Option<PgUnitOfWork>,
    /// A staged write that no longer applied when the transaction was begun: the commit fails.
    failed: bool,
}

impl std::fmt::Debug for PgDeferredUnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDeferredUnitOfWork")
            .field("staged", &self.staged.len())
            .field("begun", &self.begun.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl PgDeferredUnitOfWork {
    /// A deferred unit of work on `pool` whose lock waits (at commit, or in the transaction it
    /// may begin) last at most `lock_wait`.
    pub(crate) fn new(pool: PgPool, lock_wait: Duration, record: Option<KeyRecord>) -> Self {
        Self {
            pool,
            lock_wait,
            staged: Vec::new(),
            record,
            begun: None,
            failed: false,
        }
    }

    /// Whether it has begun a real transaction (its caller needed one).
    pub fn has_begun(&self) -> bool {
        self.begun.is_some() || self.failed
    }

    /// The deferred unit of work inside `uow` while it still stages writes.
    pub(crate) fn staging(uow: &mut dyn UnitOfWork) -> Option<&mut Self> {
        uow.as_any_mut()
            .downcast_mut::<Self>()
            .filter(|deferred| !deferred.has_begun())
    }

    /// The deferred unit of work inside `uow`, begun or not.
    pub(crate) fn of(uow: &mut dyn UnitOfWork) -> Option<&mut Self> {
        uow.as_any_mut().downcast_mut::<Self>()
    }

    /// Whether a write to `stream` is staged.
    pub(crate) fn stages(&self, stream: &StreamId) -> bool {
        self.staged.iter().any(|write| write.stream() == stream)
    }

    /// Stages a write.
    pub(crate) fn stage(&mut self, write: Box<dyn StagedWrite>) {
        self.staged.push(write);
    }

    /// Stages the idempotency record's response.
    pub(crate) fn complete(&mut self, response: &[u8]) -> Result<()> {
        match &mut self.record {
            Some(record) => {
                record.response = Some(response.to_vec());
                Ok(())
            }
            None => Err(Error::storage(
                "this deferred unit of work has no idempotency record to complete",
            )),
        }
    }

    fn lock_wait_ms(&self) -> u128 {
        self.lock_wait.as_millis().clamp(1, i32::MAX as u128)
    }

    /// The transaction's connection, beginning the transaction (and writing what was staged in
    /// it) on first use.
    pub(crate) async fn transaction(&mut self) -> Result<&mut PgConnection> {
        if self.failed {
            return Err(rolled_back(
                "a write staged in this unit of work no longer applied when its transaction began",
            ));
        }
        if self.begun.is_none() {
            let tx = self
                .pool
                .begin_with(format!(
                    "BEGIN; SET LOCAL lock_timeout = {}",
                    self.lock_wait_ms()
                ))
                .await
                .map_err(Error::storage)?;
            let mut uow = PgUnitOfWork::from_transaction(tx);
            for write in std::mem::take(&mut self.staged) {
                if let Err(error) = write.flush(uow.connection()).await {
                    self.failed = true;
                    // Rolled back as it is dropped.
                    drop(uow);
                    return Err(error);
                }
            }
            self.begun = Some(uow);
        }
        match self.begun.as_mut() {
            Some(uow) => Ok(uow.connection()),
            None => Err(Error::storage("the deferred transaction did not begin")),
        }
    }

    /// The statement that commits the staged writes: the idempotency record first (it sets
    /// the lock wait of the statement's implicit transaction; it takes over an expired record
    /// or a timed-out claim of the same request, as a claim does), then each staged write as a
    /// data-modifying CTE. Its one row counts what was written; a record that is taken, or a
    /// write whose expectation does not hold (it returns fewer rows than it must), fails it
    /// with a cast error naming it.
    fn statement(&self, with_writes: bool) -> String {
        let mut ctes = vec![
            "t AS (SELECT clock_timestamp() AS now, \
             set_config('lock_timeout', $1::text, true) AS lock_wait)"
                .to_owned(),
        ];
        let mut total = vec![];
        let mut offset = 1;
        if let Some(record) = &self.record {
            ctes.push(format!(
                "committed_key AS (
                 INSERT INTO {} AS k (scope, idempotency_key, fingerprint, status, response,
                                 created_at, completed_at, expires_at)
                 SELECT $2, $3, $4, 'completed', $5, t.now, t.now,
                        t.now + $6::float8 * interval '1 millisecond'
                 FROM t
                 ON CONFLICT (scope, idempotency_key) DO UPDATE
                 SET fingerprint = EXCLUDED.fingerprint, status = 'completed', lease = NULL,
                     locked_until = NULL, response = EXCLUDED.response,
                     created_at = EXCLUDED.created_at, completed_at = EXCLUDED.completed_at,
                     expires_at = EXCLUDED.expires_at
                 WHERE k.expires_at <= EXCLUDED.created_at
                    OR (k.status = 'in_progress' AND k.locked_until <= EXCLUDED.created_at
                        AND k.fingerprint = EXCLUDED.fingerprint)
                 RETURNING 1)",
                record.table
            ));
            total.push(
                "(SELECT CASE WHEN count(*) = 1 THEN 1
                         ELSE ('dtx staged key is taken: ' || count(*))::bigint END
                  FROM committed_key)"
                    .to_owned(),
            );
            offset = 6;
        }
        if with_writes {
            for (i, write) in self.staged.iter().enumerate() {
                let (sql, params, rows) = write.statement(offset);
                offset += params;
                ctes.push(format!("staged_{i} AS (\n{sql}\n)"));
                total.push(format!(
                    "(SELECT CASE WHEN count(*) = {rows} THEN count(*)
                             ELSE ('dtx staged write {i} conflicts: ' || count(*))::bigint END
                      FROM staged_{i})"
                ));
            }
        }
        if total.is_empty() {
            total.push("0".to_owned());
        }
        format!(
            "WITH {}\nSELECT ({})::bigint AS written",
            ctes.join(",\n"),
            total.join(" + ")
        )
    }

    /// Binds the parameters of [`statement`](Self::statement).
    fn bind<'q>(&'q self, sql: &'q str, with_writes: bool) -> Committing<'q> {
        let mut query: Committing<'q> =
            sqlx::query_scalar(sql).bind(self.lock_wait_ms().to_string());
        if let Some(record) = &self.record {
            query = query
                .bind(record.scope.as_str())
                .bind(record.key.as_str())
                .bind(record.fingerprint.as_slice())
                .bind(record.response.as_deref())
                .bind(record.ttl_ms);
        }
        if with_writes {
            for write in &self.staged {
                query = write.bind(query);
            }
        }
        query
    }

    async fn commit_now(mut self) -> Result<()> {
        if self.failed {
            return Err(rolled_back(
                "a write staged in this unit of work no longer applied when its transaction began",
            ));
        }
        let complete = self
            .record
            .as_ref()
            .is_some_and(|record| record.response.is_some());
        if !complete {
            self.record = None;
        }
        if let Some(mut begun) = self.begun.take() {
            if complete {
                let sql = self.statement(false);
                if let Err(error) = self
                    .bind(&sql, false)
                    .fetch_one(&mut *begun.connection())
                    .await
                {
                    // Not committed: the transaction rolls back as it is dropped.
                    return Err(rolled_back_by(error));
                }
            }
            return begun.commit().await;
        }
        if self.staged.is_empty() && !complete {
            return Ok(());
        }
        let sql = self.statement(true);
        match self.bind(&sql, true).fetch_one(&self.pool).await {
            Ok(_) => Ok(()),
            Err(error) if outcome_unknown(&error) => Err(Error::CommitOutcomeUnknown {
                source: Box::new(error),
            }),
            Err(error) => Err(self.failed_commit(error).await),
        }
    }

    /// What a commit statement that failed on the server tells the caller: the staged write
    /// whose expectation failed ([`Error::Conflict`]), or [`Error::RolledBack`].
    async fn failed_commit(&self, error: sqlx::Error) -> Error {
        let write = if unique_violation(&error) == Some("event_store_stream_version") {
            let detail = match &error {
                sqlx::Error::Database(db) => db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail().map(str::to_owned)),
                _ => None,
            };
            self.staged
                .iter()
                .find(|write| {
                    detail
                        .as_deref()
                        .is_some_and(|d| d.contains(&format!("({},", write.stream())))
                })
                .or(self.staged.first())
        } else if let sqlx::Error::Database(db) = &error
            && db.code().as_deref() == Some("22P02")
            && let Some(rest) = db.message().split("dtx staged write ").nth(1)
        {
            rest.split(' ')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| self.staged.get(i))
        } else {
            None
        };
        match write {
            Some(write) => write.conflict().await,
            None => rolled_back_by(error),
        }
    }
}

fn rolled_back(reason: &str) -> Error {
    Error::RolledBack {
        source: reason.into(),
    }
}

fn rolled_back_by(error: sqlx::Error) -> Error {
    Error::RolledBack {
        source: Box::new(error),
    }
}

impl UnitOfWork for PgDeferredUnitOfWork {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// One statement writes everything staged, or the transaction it began commits; see the
    /// [type's docs](PgDeferredUnitOfWork).
    fn commit(self) -> impl Future<Output = Result<()>> + Send {
        self.commit_now()
    }

    /// Discards what was staged, and rolls back the transaction if one was begun.
    async fn rollback(mut self) -> Result<()> {
        match self.begun.take() {
            Some(begun) => begun.rollback().await,
            None => Ok(()),
        }
    }

    fn commit_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).commit_now())
    }

    fn rollback_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).rollback())
    }
}

/// `sql` with every parameter `$n` renumbered `$(n + by)`.
pub(crate) fn shift_parameters(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shift_parameters;

    #[test]
    fn parameters_are_renumbered() {
        assert_eq!(
            shift_parameters("SELECT $1, $2::bigint, $10 FROM t WHERE a = $9", 6),
            "SELECT $7, $8::bigint, $16 FROM t WHERE a = $15"
        );
        assert_eq!(shift_parameters("no parameters", 3), "no parameters");
    }
}

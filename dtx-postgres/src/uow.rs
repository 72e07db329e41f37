//! The PostgreSQL unit of work: one transaction that every store joins.

use crate::deferred::PgDeferredUnitOfWork;
use dtx::uow::BoxFuture;
use dtx::{Error, Result, UnitOfWork};
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use std::any::Any;

/// A PostgreSQL transaction that dtx's components join ([`dtx::uow`]): events, saga starts,
/// idempotency records and outbox messages written through it commit together, with the
/// user's own SQL on [`connection`](Self::connection).
///
/// Dropping it without [`commit`](UnitOfWork::commit) rolls the transaction back. After a
/// failed statement (a race lost to a concurrent writer, say, or the caller's own SQL)
/// PostgreSQL refuses further statements in the transaction, and its commit is
/// [`Error::RolledBack`]: roll back and run the unit of work again.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> dtx::Result<()> {
/// use dtx::UnitOfWork;
/// use dtx_postgres::PgUnitOfWork;
///
/// let mut uow = PgUnitOfWork::begin(&pool).await?;
/// sqlx::query("INSERT INTO audit (what) VALUES ('order placed')")
///     .execute(uow.connection())
///     .await
///     .map_err(dtx::Error::storage)?;
/// // ... bus.execute_in(&mut uow, command), sagas.start_in(&mut uow, data), ...
/// uow.commit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PgUnitOfWork {
    tx: sqlx::Transaction<'static, Postgres>,
}

impl PgUnitOfWork {
    /// Begins a transaction on a connection of `pool`.
    pub async fn begin(pool: &PgPool) -> Result<Self> {
        Ok(Self {
            tx: pool.begin().await.map_err(Error::storage)?,
        })
    }

    /// Wraps a transaction the caller began.
    pub fn from_transaction(tx: sqlx::Transaction<'static, Postgres>) -> Self {
        Self { tx }
    }

    /// The transaction's connection, for the caller's own SQL.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The connection of the PostgreSQL unit of work inside `uow` (a
    /// [`PgDeferredUnitOfWork`] begins its transaction), or [`Error::UnitOfWork`] when it is
    /// another backend's.
    pub(crate) async fn of(uow: &mut dyn UnitOfWork) -> Result<&mut PgConnection> {
        if uow.as_any_mut().is::<PgDeferredUnitOfWork>() {
            return match PgDeferredUnitOfWork::of(uow) {
                Some(deferred) => deferred.transaction().await,
                None => Err(Error::UnitOfWork {
                    expected: "postgres",
                    actual: "postgres",
                }),
            };
        }
        Ok(uow.downcast::<Self>("postgres")?.connection())
    }

    /// The transaction's connection when all a function has is `&mut dyn UnitOfWork` (a
    /// projection's handler, or an HTTP handler given the request's unit of work): the user's
    /// own SQL on it commits with the unit of work. A [`PgDeferredUnitOfWork`] begins its
    /// transaction here (and writes what it had staged in it). [`Error::UnitOfWork`] when `uow`
    /// is another backend's.
    ///
    /// ```no_run
    /// # async fn demo(uow: &mut dyn dtx::UnitOfWork) -> dtx::Result<()> {
    /// let conn = dtx_postgres::PgUnitOfWork::connection_of(uow).await?;
    /// sqlx::query("UPDATE order_summaries SET items = items + 1 WHERE id = $1")
    ///     .bind(42_i64)
    ///     .execute(conn)
    ///     .await
    ///     .map_err(dtx::Error::storage)?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connection_of(uow: &mut dyn UnitOfWork) -> Result<&mut PgConnection> {
        Self::of(uow).await
    }
}

impl UnitOfWork for PgUnitOfWork {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    /// A transaction that a failed statement aborted (a dtx store's or the caller's own) is
    /// [`Error::RolledBack`]: PostgreSQL answers its `COMMIT` with `ROLLBACK`, which sqlx
    /// reports as success, so the commit first asks, with an empty statement that fails in an
    /// aborted transaction, and rolls back. A connection lost once `COMMIT` may have been sent
    /// is [`Error::CommitOutcomeUnknown`]: the transaction may have committed.
    async fn commit(mut self) -> Result<()> {
        if let Err(error) = sqlx::query("SELECT").execute(&mut *self.tx).await {
            if !in_failed_transaction(&error) {
                // `COMMIT` was never sent: dropping the transaction rolls it back.
                return Err(Error::storage(error));
            }
            // Rolled back either way: on the server now, or as the connection closes.
            let _ = self.tx.rollback().await;
            return Err(Error::RolledBack {
                source: Box::new(error),
            });
        }
        self.tx.commit().await.map_err(crate::sql::classify_commit)
    }

    async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(Error::storage)
    }

    fn commit_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).commit())
    }

    fn rollback_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).rollback())
    }
}

/// Whether `error` is PostgreSQL refusing a statement in a transaction that has failed
/// (`25P02`, `in_failed_sql_transaction`).
fn in_failed_transaction(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25P02"))
}

#[async_trait::async_trait]
impl dtx::outbox::Outbox for crate::PgOutbox {
    /// Adds the messages in the unit of work's transaction, in one statement.
    async fn enqueue_in(
        &self,
        uow: &mut dyn UnitOfWork,
        messages: Vec<dtx::outbox::NewOutboxMessage>,
    ) -> Result<()> {
        self.enqueue(PgUnitOfWork::of(uow).await?, messages).await
    }
}

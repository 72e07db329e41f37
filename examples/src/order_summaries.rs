//! The order-summary read model: a `#[projection]` over the order's events keeps one row per
//! order (customer, status, line count, total), and the query bus serves it, cached, as
//! [`GetOrderSummaryView`]. Each handler drops the cached answer of the order it changed.
//!
//! Two storages behind one type: a PostgreSQL table written in the projection's transaction
//! (with its checkpoint: exactly once), or a map in memory written when the unit of work
//! commits. Both fold the events with the same [`OrderSummary`] changes.

use crate::order::{
    LineAdded, Order, OrderCancelled, OrderConfirmed, OrderId, OrderPlaced, OrderSummary, Status,
};
use dtx::cqrs::State;
use dtx::projection::Invalidations;
use dtx::{Aggregate, MemoryUnitOfWork, RecordedEvent, UnitOfWork, query_handler};
use dtx_postgres::PgUnitOfWork;
use dtx_postgres::sqlx::{self, PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What the handlers return on failure (the runner retries, then stops the projection).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The order summaries, by order.
#[derive(Debug, Clone)]
pub enum OrderSummaries {
    /// In memory, written when the projection's unit of work commits.
    Memory(Arc<Mutex<HashMap<OrderId, OrderSummary>>>),
    /// The table `order_summaries`, written in the projection's transaction.
    Postgres(PgPool),
}

impl OrderSummaries {
    /// An empty read model in memory.
    pub fn in_memory() -> Self {
        Self::Memory(Arc::default())
    }

    /// The read model in the table `order_summaries` of `pool`'s database, created if missing.
    ///
    /// # Errors
    /// The database's.
    pub async fn postgres(pool: PgPool) -> sqlx::Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS order_summaries (
                 order_id UUID PRIMARY KEY,
                 customer TEXT NOT NULL,
                 status TEXT NOT NULL,
                 lines BIGINT NOT NULL,
                 total_cents BIGINT NOT NULL,
                 version BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Self::Postgres(pool))
    }

    /// The summary of `order_id`, if the projection has seen the order.
    ///
    /// # Errors
    /// The database's.
    pub async fn get(&self, order_id: OrderId) -> Result<Option<OrderSummary>, BoxError> {
        match self {
            Self::Memory(rows) => Ok(lock(rows).get(&order_id).cloned()),
            Self::Postgres(pool) => load(&mut *pool.acquire().await?, order_id).await,
        }
    }

    /// Applies `change` to the summary of the order whose event this is (a new one for its
    /// first event) in `uow`, and drops the cached [`GetOrderSummaryView`] of that order once
    /// `uow` commits.
    async fn update(
        &self,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
        inv: &mut Invalidations,
        change: impl FnOnce(&mut OrderSummary) + Send + 'static,
    ) -> Result<(), BoxError> {
        let order_id = order_of(event)?;
        let version = event.version;
        match self {
            Self::Memory(rows) => {
                let rows = Arc::clone(rows);
                MemoryUnitOfWork::downcast(uow)?.on_commit(move || {
                    let mut rows = lock(&rows);
                    let summary = rows.entry(order_id).or_default();
                    change(summary);
                    summary.version = version;
                });
            }
            Self::Postgres(_) => {
                let conn = PgUnitOfWork::connection_of(uow).await?;
                let mut summary = load(conn, order_id).await?.unwrap_or_default();
                change(&mut summary);
                summary.version = version;
                store(conn, order_id, &summary).await?;
            }
        }
        inv.query(GetOrderSummaryView { order_id });
        Ok(())
    }
}

#[dtx::projection(name = "order_summaries")]
impl OrderSummaries {
    async fn placed(
        &self,
        placed: &OrderPlaced,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
        inv: &mut Invalidations,
    ) -> Result<(), BoxError> {
        let customer = placed.customer.clone();
        self.update(meta, uow, inv, move |s| {
            s.customer = customer;
            s.status = Status::Open;
        })
        .await
    }

    async fn line_added(
        &self,
        added: &LineAdded,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
        inv: &mut Invalidations,
    ) -> Result<(), BoxError> {
        let cents = u64::from(added.line.quantity) * added.line.unit_price_cents;
        self.update(meta, uow, inv, move |s| {
            s.lines += 1;
            s.total_cents += cents;
        })
        .await
    }

    async fn confirmed(
        &self,
        _: &OrderConfirmed,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
        inv: &mut Invalidations,
    ) -> Result<(), BoxError> {
        self.update(meta, uow, inv, |s| s.status = Status::Confirmed)
            .await
    }

    async fn cancelled(
        &self,
        _: &OrderCancelled,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
        inv: &mut Invalidations,
    ) -> Result<(), BoxError> {
        self.update(meta, uow, inv, |s| s.status = Status::Cancelled)
            .await
    }

    /// Empties the read model when it is rebuilt from the first event.
    #[clear]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), BoxError> {
        match self {
            Self::Memory(rows) => {
                let rows = Arc::clone(rows);
                MemoryUnitOfWork::downcast(uow)?.on_commit(move || lock(&rows).clear());
            }
            Self::Postgres(_) => {
                sqlx::query("DELETE FROM order_summaries")
                    .execute(PgUnitOfWork::connection_of(uow).await?)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Ask the read model for an order's summary: `None` until the projection has seen the order.
/// Eventually consistent, unlike [`crate::order::GetOrderSummary`], which loads the aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GetOrderSummaryView {
    /// The order.
    pub order_id: OrderId,
}

/// Answers [`GetOrderSummaryView`] from the read model; cached for five seconds, and dropped
/// from the cache by the projection when the order changes.
#[query_handler(cache(ttl_secs = 5, capacity = 10_000))]
pub async fn order_summary_view(
    query: GetOrderSummaryView,
    State(summaries): State<OrderSummaries>,
) -> Result<Option<OrderSummary>, BoxError> {
    summaries.get(query.order_id).await
}

/// The order an event of an order stream (`Order-{id}`) belongs to.
fn order_of(event: &RecordedEvent) -> Result<OrderId, BoxError> {
    let id = event
        .stream_id
        .as_str()
        .strip_prefix(Order::TYPE)
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| format!("{} is not an order stream", event.stream_id))?;
    Ok(id.parse()?)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The row of `order_id`.
async fn load(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Option<OrderSummary>, BoxError> {
    let row: Option<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT customer, status, lines, total_cents, version
         FROM order_summaries WHERE order_id = $1",
    )
    .bind(order_id.uuid())
    .fetch_optional(conn)
    .await?;
    let Some((customer, status, lines, total_cents, version)) = row else {
        return Ok(None);
    };
    Ok(Some(OrderSummary {
        customer,
        status: status_named(&status)?,
        lines: usize::try_from(lines)?,
        total_cents: u64::try_from(total_cents)?,
        version: u64::try_from(version)?,
    }))
}

/// Writes the row of `order_id`.
async fn store(
    conn: &mut PgConnection,
    order_id: OrderId,
    summary: &OrderSummary,
) -> Result<(), BoxError> {
    sqlx::query(
        "INSERT INTO order_summaries (order_id, customer, status, lines, total_cents, version)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (order_id) DO UPDATE
         SET customer = EXCLUDED.customer, status = EXCLUDED.status, lines = EXCLUDED.lines,
             total_cents = EXCLUDED.total_cents, version = EXCLUDED.version",
    )
    .bind(order_id.uuid())
    .bind(&summary.customer)
    .bind(status_name(summary.status))
    .bind(i64::try_from(summary.lines)?)
    .bind(i64::try_from(summary.total_cents)?)
    .bind(i64::try_from(summary.version)?)
    .execute(conn)
    .await?;
    Ok(())
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::New => "new",
        Status::Open => "open",
        Status::Confirmed => "confirmed",
        Status::Cancelled => "cancelled",
    }
}

fn status_named(name: &str) -> Result<Status, BoxError> {
    [
        Status::New,
        Status::Open,
        Status::Confirmed,
        Status::Cancelled,
    ]
    .into_iter()
    .find(|s| status_name(*s) == name)
    .ok_or_else(|| format!("unknown order status {name:?}").into())
}

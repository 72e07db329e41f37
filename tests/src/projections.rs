//! A read model the projection tests share: per stream, how many `Tick` events were applied,
//! the last version and a checksum of the payloads in order. A handler that sees a version
//! not above the last one fails, so an event applied twice or out of order stops the
//! projection visibly; the checksum shows one skipped.

use dtx::{DomainEvent, MemoryUnitOfWork, RecordedEvent, UnitOfWork};
use dtx_postgres::PgUnitOfWork;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The payload the projection tests append.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    /// Any number: folded into the checksum.
    pub n: u64,
}

/// The events of the projection tests (the crash test's `Tick` only).
#[derive(Debug, Clone, DomainEvent)]
// A test fixture, not a published contract.
#[event(schema = false)]
pub enum TickEvent {
    /// A tick.
    Tick(Tick),
}

/// What a stream folds to: events, last version, checksum.
pub type Fold = (u64, u64, i64);

/// The fold of one more event.
pub fn step(fold: Fold, version: u64, n: u64) -> Fold {
    let checksum = fold
        .2
        .wrapping_mul(31)
        .wrapping_add(i64::try_from(n).unwrap_or(i64::MAX))
        % 1_000_000_007;
    (fold.0 + 1, version, checksum)
}

/// The fold of every `Tick` of the feed, computed straight from the store.
///
/// # Errors
/// The store's.
pub async fn expected_folds(store: &dyn dtx::EventStore) -> dtx::Result<BTreeMap<String, Fold>> {
    let mut folds = BTreeMap::new();
    let mut after = dtx::GlobalPosition::START;
    loop {
        let events = store.read_all(after, 5000).await?;
        let Some(last) = events.last() else {
            return Ok(folds);
        };
        after = last.position;
        for event in events.iter().filter(|e| e.event_type == "Tick") {
            let tick: Tick = serde_json::from_str(&event.data).unwrap_or(Tick { n: 0 });
            let fold = folds
                .entry(event.stream_id.to_string())
                .or_insert((0, 0, 0));
            *fold = step(*fold, event.version, tick.n);
        }
    }
}

/// The read model in PostgreSQL, in table `table`.
#[derive(Debug, Clone)]
pub struct PgFolds {
    /// The table (created by [`PgFolds::create`]).
    pub table: &'static str,
}

impl PgFolds {
    /// Creates the table.
    ///
    /// # Errors
    /// The database's.
    pub async fn create(&self, pool: &PgPool) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL,
             last_version BIGINT NOT NULL, checksum BIGINT NOT NULL)",
            self.table
        ))
        .execute(pool)
        .await
        .map(drop)
    }

    /// What the table holds.
    ///
    /// # Errors
    /// The database's.
    pub async fn read(&self, pool: &PgPool) -> sqlx::Result<BTreeMap<String, Fold>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT stream_id, events, last_version, checksum FROM {}",
            self.table
        ))
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(s, e, v, c)| (s, (e.unsigned_abs(), v.unsigned_abs(), c)))
            .collect())
    }
}

/// A boxed error, as the tests' handlers return.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[dtx::projection(name = "pg_folds")]
impl PgFolds {
    async fn tick(
        &self,
        tick: &Tick,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), BoxError> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        let row: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT events, last_version, checksum FROM {} WHERE stream_id = $1",
            self.table
        ))
        .bind(event.stream_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let fold = row.map_or((0, 0, 0), |(e, v, c)| {
            (e.unsigned_abs(), v.unsigned_abs(), c)
        });
        if event.version <= fold.1 {
            return Err(format!(
                "stream {} at version {} got version {}",
                event.stream_id, fold.1, event.version
            )
            .into());
        }
        let (events, version, checksum) = step(fold, event.version, tick.n);
        sqlx::query(&format!(
            "INSERT INTO {} (stream_id, events, last_version, checksum) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = EXCLUDED.events, last_version = EXCLUDED.last_version,
                 checksum = EXCLUDED.checksum",
            self.table
        ))
        .bind(event.stream_id.as_str())
        .bind(i64::try_from(events)?)
        .bind(i64::try_from(version)?)
        .bind(checksum)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    #[clear]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), BoxError> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The read model in memory, written when the unit of work commits.
#[derive(Debug, Clone, Default)]
pub struct MemoryFolds {
    /// The folds.
    pub folds: Arc<Mutex<BTreeMap<String, Fold>>>,
    /// Events applied out of order or twice (must stay 0).
    pub violations: Arc<AtomicUsize>,
}

impl MemoryFolds {
    /// What it holds.
    pub fn read(&self) -> BTreeMap<String, Fold> {
        self.folds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[dtx::projection(name = "memory_folds")]
impl MemoryFolds {
    #[allow(clippy::unused_async, reason = "handlers are async")]
    async fn tick(
        &self,
        tick: &Tick,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), dtx::Error> {
        // Applied when the unit of work commits, with the checkpoint's move.
        let (folds, violations) = (Arc::clone(&self.folds), Arc::clone(&self.violations));
        let (stream, version, n) = (event.stream_id.to_string(), event.version, tick.n);
        MemoryUnitOfWork::downcast(uow)?.on_commit(move || {
            let mut folds = folds.lock().unwrap_or_else(PoisonError::into_inner);
            let fold = folds.entry(stream).or_insert((0, 0, 0));
            if version <= fold.1 {
                violations.fetch_add(1, Ordering::SeqCst);
            }
            *fold = step(*fold, version, n);
        });
        Ok(())
    }

    #[clear]
    #[allow(clippy::unused_async, reason = "handlers are async")]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), dtx::Error> {
        let folds = Arc::clone(&self.folds);
        MemoryUnitOfWork::downcast(uow)?.on_commit(move || {
            folds.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
        Ok(())
    }
}

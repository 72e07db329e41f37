//! A read model the projection tests share: per stream, how many `Tick` events were applied,
//! the last version and a checksum of the payloads in order. A handler that sees a version
//! not above the last one fails, so an event applied twice or out of order stops the
//! projection visibly; the checksum shows one skipped.

use dtx::projection::{HandlerError, Invalidations, Projection, ProjectionKind};
use dtx::uow::BoxFuture;
use dtx::{RecordedEvent, UnitOfWork};
use dtx_postgres::PgUnitOfWork;
use sqlx::PgPool;
use std::collections::BTreeMap;

/// The payload the projection tests append.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    /// Any number: folded into the checksum.
    pub n: u64,
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

fn decode(event: &RecordedEvent) -> Result<Tick, HandlerError> {
    serde_json::from_str(&event.data).map_err(|source| {
        HandlerError::Decode(dtx::Error::Decode {
            stream: event.stream_id.clone(),
            version: event.version,
            source: dtx::DecodeError::Malformed {
                event_type: event.event_type.clone(),
                source,
            },
        })
    })
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

    async fn apply(
        &self,
        event: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), HandlerError> {
        let tick = decode(event)?;
        let conn = PgUnitOfWork::connection_of(uow).map_err(HandlerError::failed)?;
        let row: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT events, last_version, checksum FROM {} WHERE stream_id = $1",
            self.table
        ))
        .bind(event.stream_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(HandlerError::failed)?;
        let fold = row.map_or((0, 0, 0), |(e, v, c)| {
            (e.unsigned_abs(), v.unsigned_abs(), c)
        });
        if event.version <= fold.1 {
            return Err(HandlerError::failed(format!(
                "stream {} at version {} got version {}",
                event.stream_id, fold.1, event.version
            )));
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
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(checksum)
        .execute(&mut *conn)
        .await
        .map_err(HandlerError::failed)?;
        Ok(())
    }
}

impl Projection for PgFolds {
    const NAME: &'static str = "pg_folds";
    const VERSION: u32 = 1;
    const KIND: ProjectionKind = ProjectionKind::ReadModel;

    fn event_types() -> &'static [&'static str] {
        &["Tick"]
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        uow: Option<&'a mut dyn UnitOfWork>,
        _invalidations: &'a mut Invalidations,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let uow =
                uow.ok_or_else(|| HandlerError::failed("a read model needs its unit of work"))?;
            self.apply(event, uow).await
        })
    }

    fn clear<'a>(&'a self, uow: &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let conn = PgUnitOfWork::connection_of(uow).map_err(HandlerError::failed)?;
            sqlx::query(&format!("DELETE FROM {}", self.table))
                .execute(conn)
                .await
                .map_err(HandlerError::failed)?;
            Ok(())
        })
    }
}

/// The read model in memory, written when the unit of work commits.
#[derive(Debug, Clone, Default)]
pub struct MemoryFolds {
    /// The folds.
    pub folds: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Fold>>>,
    /// Events applied out of order or twice (must stay 0).
    pub violations: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl MemoryFolds {
    /// What it holds.
    ///
    /// # Panics
    /// When a handler panicked holding the lock.
    pub fn read(&self) -> BTreeMap<String, Fold> {
        self.folds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Projection for MemoryFolds {
    const NAME: &'static str = "memory_folds";
    const VERSION: u32 = 1;
    const KIND: ProjectionKind = ProjectionKind::ReadModel;

    fn event_types() -> &'static [&'static str] {
        &["Tick"]
    }

    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        uow: Option<&'a mut dyn UnitOfWork>,
        _invalidations: &'a mut Invalidations,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let tick = decode(event)?;
            let uow =
                uow.ok_or_else(|| HandlerError::failed("a read model needs its unit of work"))?;
            let uow = dtx::MemoryUnitOfWork::downcast(uow).map_err(HandlerError::failed)?;
            // Staged until the commit: the check runs against what is committed then.
            let folds = std::sync::Arc::clone(&self.folds);
            let stream = event.stream_id.to_string();
            let version = event.version;
            let violations = std::sync::Arc::clone(&self.violations);
            uow.on_commit(move || {
                let mut folds = folds
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let fold = folds.entry(stream).or_insert((0, 0, 0));
                if version <= fold.1 {
                    violations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                *fold = step(*fold, version, tick.n);
            });
            Ok(())
        })
    }

    fn clear<'a>(&'a self, uow: &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let uow = dtx::MemoryUnitOfWork::downcast(uow).map_err(HandlerError::failed)?;
            let folds = std::sync::Arc::clone(&self.folds);
            uow.on_commit(move || {
                folds
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            });
            Ok(())
        })
    }
}

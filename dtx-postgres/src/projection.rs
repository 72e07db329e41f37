//! Projection checkpoints on PostgreSQL (`projection_checkpoints`, `projection_skips`).

use crate::PgUnitOfWork;
use crate::restore::FeedGuard;
use crate::sql::{Schema, get, millis, to_i32, to_i64, to_u32, to_u64};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::projection::{
    Advance, Checkpoint, CheckpointKey, CheckpointStore, Failure, Lease, ProjectionStatus,
    SkipRecord,
};
use dtx::{Error, GlobalPosition, Result, UnitOfWork};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Executor, Postgres};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Projection checkpoints in PostgreSQL: a runner's batch and its checkpoint move commit in one
/// transaction ([`PgUnitOfWork`]), so a read model in the same database is updated exactly once
/// per event.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> dtx::Result<()> {
/// use dtx::projection::ProjectionRunner;
/// use dtx_postgres::{PgCheckpointStore, PgEventStore};
/// use std::sync::Arc;
///
/// let runner = ProjectionRunner::new(
///     Arc::new(PgEventStore::new(pool.clone())),
///     Arc::new(PgCheckpointStore::new(pool)),
/// );
/// // .projection(MyReadModel { .. }).start()?
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgCheckpointStore {
    pool: PgPool,
    sql: Arc<Sql>,
    /// The check before a runner first takes a checkpoint that the feed is not ahead of the
    /// transaction ids (see [`crate::check_feed`]).
    guard: FeedGuard,
}

#[derive(Debug)]
struct Sql {
    acquire: String,
    advance: String,
    fail: String,
    release: String,
    list: String,
    skip: String,
    resume: String,
    skips: String,
    reset: String,
}

/// The columns of a checkpoint row, in the order [`checkpoint`] reads them.
const COLUMNS: &str = "name, version, partition, partitions, commit_order, global_position, status, \
     applied, failed_commit_order, failed_position, failed_stream_id, failed_version, \
     failed_event_id, last_error, attempts, owner, lease_until, updated_at";

impl Sql {
    fn new(schema: &Schema) -> Self {
        let table = schema.table("projection_checkpoints");
        let skips = schema.table("projection_skips");
        Self {
            // Create it at the start (held by the caller) if missing, else take the lease if it
            // is free, expired or ours; `created` tells a fresh row (xmax = 0 when inserted).
            acquire: format!(
                "INSERT INTO {table} AS c (name, version, partition, partitions, owner, lease_until)
                 VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond')
                 ON CONFLICT (name, version, partition) DO UPDATE
                    SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
                        partitions = EXCLUDED.partitions
                  WHERE c.owner IS NULL OR c.owner = EXCLUDED.owner OR c.lease_until <= now()
                 RETURNING {COLUMNS}, (xmax = 0) AS created"
            ),
            advance: format!(
                "UPDATE {table}
                    SET commit_order = $6, global_position = $7, applied = applied + $8,
                        lease_until = now() + $9 * interval '1 millisecond',
                        status = 'running', updated_at = now()
                  WHERE name = $1 AND version = $2 AND partition = $3 AND owner = $5
                    AND commit_order = $10 AND global_position = $11
                    AND status = 'running'"
            ),
            fail: format!(
                "UPDATE {table}
                    SET status = 'failed', failed_commit_order = $5, failed_position = $6,
                        failed_stream_id = $7, failed_version = $8, failed_event_id = $9,
                        last_error = $10, attempts = $11, updated_at = now()
                  WHERE name = $1 AND version = $2 AND partition = $3 AND owner = $4"
            ),
            release: format!(
                "UPDATE {table} SET owner = NULL, lease_until = NULL
                  WHERE name = $1 AND version = $2 AND partition = $3 AND owner = $4"
            ),
            list: format!(
                "SELECT {COLUMNS}, false AS created FROM {table} ORDER BY name, version, partition"
            ),
            // Move past the failed event and record why, in one statement.
            skip: format!(
                "WITH skipped AS (
                     UPDATE {table} c
                        SET commit_order = old.failed_commit_order, global_position = old.failed_position,
                            status = 'running', failed_commit_order = NULL, failed_position = NULL,
                            failed_stream_id = NULL, failed_version = NULL, failed_event_id = NULL,
                            last_error = NULL, attempts = 0, updated_at = now()
                       FROM {table} old
                      WHERE c.name = $1 AND c.version = $2 AND c.partition = $3
                        AND old.name = c.name AND old.version = c.version
                        AND old.partition = c.partition AND old.status = 'failed'
                      RETURNING old.*
                 )
                 INSERT INTO {skips} (name, version, partition, commit_order, global_position,
                                      stream_id, stream_version, event_id, error, attempts, reason)
                 SELECT name, version, partition, failed_commit_order, failed_position,
                        failed_stream_id, failed_version, failed_event_id, last_error, attempts, $4
                 FROM skipped
                 RETURNING name, version, partition, commit_order, global_position, stream_id,
                           stream_version, event_id, error, attempts, reason, skipped_at"
            ),
            resume: format!(
                "UPDATE {table}
                    SET status = 'running', failed_commit_order = NULL, failed_position = NULL,
                        failed_stream_id = NULL, failed_version = NULL, failed_event_id = NULL,
                        last_error = NULL, attempts = 0, updated_at = now()
                  WHERE name = $1 AND version = $2 AND partition = $3 AND status = 'failed'"
            ),
            skips: format!(
                "SELECT name, version, partition, commit_order, global_position, stream_id,
                        stream_version, event_id, error, attempts, reason, skipped_at
                 FROM {skips} WHERE name = $1 ORDER BY id"
            ),
            reset: format!(
                "INSERT INTO {table} (name, version, partition, partitions)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name, version, partition) DO UPDATE
                    SET commit_order = 0, global_position = 0, applied = 0, status = 'running',
                        failed_commit_order = NULL, failed_position = NULL,
                        failed_stream_id = NULL, failed_version = NULL, failed_event_id = NULL,
                        last_error = NULL, attempts = 0, updated_at = now()"
            ),
        }
    }
}

impl PgCheckpointStore {
    /// Checkpoints in the tables the pool's `search_path` finds.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(Sql::new(&Schema::default())),
            guard: FeedGuard::new(&Schema::default()),
        }
    }

    /// Checkpoints in the tables of `schema` (validated and quoted).
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        let named = Schema::named(schema)?;
        self.guard = FeedGuard::new(&named);
        self.sql = Arc::new(Sql::new(&named));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn advance_on<'e>(
        &self,
        executor: impl Executor<'e, Database = Postgres>,
        key: &CheckpointKey,
        step: &Advance,
    ) -> Result<()> {
        let Advance {
            owner,
            from,
            to,
            applied,
            lease,
        } = *step;
        let moved = sqlx::query(&self.sql.advance)
            .bind(&key.name)
            .bind(to_i32(key.version))
            .bind(to_i32(key.partition))
            .bind(to_i32(key.partitions))
            .bind(owner)
            .bind(to_i64(to.commit))
            .bind(to_i64(to.sequence))
            .bind(to_i64(applied))
            .bind(millis(lease))
            .bind(to_i64(from.commit))
            .bind(to_i64(from.sequence))
            .execute(executor)
            .await
            .map_err(Error::storage)?;
        if moved.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::Projection {
                name: key.name.clone(),
                reason: format!(
                    "checkpoint {key} is no longer held by runner {owner} at {from} \
                     (lease lost, or reset, skipped or failed meanwhile)"
                ),
            })
        }
    }
}

fn position(commit: i64, sequence: i64) -> GlobalPosition {
    GlobalPosition {
        commit: to_u64(commit),
        sequence: to_u64(sequence),
    }
}

/// A checkpoint row.
fn checkpoint(row: &PgRow) -> Result<Checkpoint> {
    let status: String = get(row, "status")?;
    let failed_position: Option<i64> = get(row, "failed_position")?;
    let failure = match failed_position {
        Some(sequence) => Some(Failure {
            position: position(
                get::<Option<i64>>(row, "failed_commit_order")?.unwrap_or(0),
                sequence,
            ),
            stream_id: get::<Option<String>>(row, "failed_stream_id")?.unwrap_or_default(),
            version: to_u64(get::<Option<i64>>(row, "failed_version")?.unwrap_or(0)),
            event_id: get::<Option<Uuid>>(row, "failed_event_id")?.unwrap_or_default(),
            error: get::<Option<String>>(row, "last_error")?.unwrap_or_default(),
            attempts: to_u32(get(row, "attempts")?),
        }),
        None => None,
    };
    Ok(Checkpoint {
        key: CheckpointKey::new(get::<String>(row, "name")?, to_u32(get(row, "version")?))
            .partition(
                to_u32(get(row, "partition")?),
                to_u32(get(row, "partitions")?),
            ),
        position: position(get(row, "commit_order")?, get(row, "global_position")?),
        status: if status == "failed" {
            ProjectionStatus::Failed
        } else {
            ProjectionStatus::Running
        },
        applied: to_u64(get(row, "applied")?),
        failure,
        owner: get(row, "owner")?,
        lease_until: get(row, "lease_until")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn skip_record(row: &PgRow) -> Result<SkipRecord> {
    Ok(SkipRecord {
        name: get(row, "name")?,
        version: to_u32(get(row, "version")?),
        partition: to_u32(get(row, "partition")?),
        failure: Failure {
            position: position(get(row, "commit_order")?, get(row, "global_position")?),
            stream_id: get(row, "stream_id")?,
            version: to_u64(get(row, "stream_version")?),
            event_id: get(row, "event_id")?,
            error: get(row, "error")?,
            attempts: to_u32(get(row, "attempts")?),
        },
        reason: get(row, "reason")?,
        skipped_at: get::<DateTime<Utc>>(row, "skipped_at")?,
    })
}

fn bind_key<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    key: &'q CheckpointKey,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&key.name)
        .bind(to_i32(key.version))
        .bind(to_i32(key.partition))
}

#[async_trait]
impl CheckpointStore for PgCheckpointStore {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>> {
        Ok(Box::new(PgUnitOfWork::begin(&self.pool).await?))
    }

    async fn acquire(
        &self,
        key: &CheckpointKey,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        self.guard.ensure(&self.pool).await?;
        let row = bind_key(sqlx::query(&self.sql.acquire), key)
            .bind(to_i32(key.partitions))
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        row.map(|row| {
            Ok(Lease {
                checkpoint: checkpoint(&row)?,
                created: get(&row, "created")?,
            })
        })
        .transpose()
    }

    async fn advance_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &CheckpointKey,
        step: &Advance,
    ) -> Result<()> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        self.advance_on(conn, key, step).await
    }

    async fn advance(&self, key: &CheckpointKey, step: &Advance) -> Result<()> {
        self.advance_on(&self.pool, key, step).await
    }

    async fn fail(&self, key: &CheckpointKey, owner: Uuid, failure: &Failure) -> Result<()> {
        let failed = bind_key(sqlx::query(&self.sql.fail), key)
            .bind(owner)
            .bind(to_i64(failure.position.commit))
            .bind(to_i64(failure.position.sequence))
            .bind(&failure.stream_id)
            .bind(to_i64(failure.version))
            .bind(failure.event_id)
            .bind(&failure.error)
            .bind(to_i32(failure.attempts))
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        if failed.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("the lease on {key} was lost to another runner"),
            })
        }
    }

    async fn release(&self, key: &CheckpointKey, owner: Uuid) -> Result<()> {
        bind_key(sqlx::query(&self.sql.release), key)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)
            .map(drop)
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(&self.sql.list)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(checkpoint).collect()
    }

    async fn skip(&self, key: &CheckpointKey, reason: &str) -> Result<SkipRecord> {
        let row = bind_key(sqlx::query(&self.sql.skip), key)
            .bind(reason)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        match row {
            Some(row) => skip_record(&row),
            None => Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("{key} has not failed: there is nothing to skip"),
            }),
        }
    }

    async fn resume(&self, key: &CheckpointKey) -> Result<()> {
        let resumed = bind_key(sqlx::query(&self.sql.resume), key)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        if resumed.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("{key} has not failed: there is nothing to resume"),
            })
        }
    }

    async fn skips(&self, name: &str) -> Result<Vec<SkipRecord>> {
        let rows = sqlx::query(&self.sql.skips)
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(skip_record).collect()
    }

    async fn reset_in(&self, uow: &mut dyn UnitOfWork, key: &CheckpointKey) -> Result<()> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        bind_key(sqlx::query(&self.sql.reset), key)
            .bind(to_i32(key.partitions))
            .execute(conn)
            .await
            .map_err(Error::storage)
            .map(drop)
    }
}

//! Health of a dtx database, for people (`dtx status`) and for orchestrators (the
//! [`router`] of feature `http`): one [`HealthCheck`] reads a [`HealthReport`], and
//! [`Thresholds`] say which of what it found are [`Problem`]s.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> dtx::Result<()> {
//! use dtx_postgres::health::{HealthCheck, Thresholds};
//!
//! let report = HealthCheck::new(pool).report().await?;
//! for problem in report.problems(&Thresholds::default()) {
//!     eprintln!("{problem}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A report reads the feed's horizon and the transaction holding it (`pg_stat_activity`,
//! `pg_prepared_xacts`), the outbox's counts, sagas by status, every projection checkpoint with
//! its lag, and the inbox's dead letters: a dozen short queries, for an operator or a probe
//! every few seconds, not for every request. The statement text of other users' transactions
//! is visible to superusers and members of `pg_read_all_stats` only.

#[cfg(feature = "http")]
mod http;
mod report;
mod thresholds;

#[cfg(feature = "http")]
pub use http::{HealthRoutes, router};
pub use report::{
    FeedHealth, HealthReport, InboxHealth, OpenTransaction, OutboxDead, OutboxHealth,
    ProjectionHealth, SagaBrief, SagaHealth,
};
pub use thresholds::{Problem, Thresholds, human};

use crate::sql::{Schema, get, to_i64, to_u32, to_u64};
use crate::{PgCheckpointStore, PgOutbox, PgSagaStore};
use chrono::{DateTime, Utc};
use dtx::projection::CheckpointStore as _;
use dtx::saga::{SagaStatus, SagaStore as _};
use dtx::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How many events after a projection's checkpoint a report counts at most.
pub const LAG_CAP: u64 = 100_000;

/// Reads [`HealthReport`]s of one database (and schema). Clones share the pool.
#[derive(Clone)]
pub struct HealthCheck {
    pool: PgPool,
    sql: Arc<Sql>,
    outbox: PgOutbox,
    sagas: PgSagaStore,
    checkpoints: PgCheckpointStore,
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck").finish_non_exhaustive()
    }
}

/// The statements of a report, built once with the schema.
struct Sql {
    feed: String,
    lag: String,
    oldest_running: String,
    expired_leases: String,
    inbox: String,
}

/// The columns of a [`SagaBrief`].
const SAGA_BRIEF: &str =
    "id, name, status, step, created_at, lease_owner, lease_expires_at, last_error";

impl Sql {
    fn new(schema: &Schema) -> Self {
        let events = schema.table("event_store");
        let sagas = schema.table("saga_state");
        let dead_letters = schema.table("inbox_dead_letters");
        Self {
            feed: format!(
                "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon)
                 SELECT h.horizon, now() AS at,
                        (SELECT global_position FROM {events}
                         ORDER BY commit_order DESC, global_position DESC LIMIT 1) AS head,
                        w.waiting, w.oldest_waiting
                 FROM h CROSS JOIN LATERAL (
                     SELECT count(*) AS waiting, min(recorded_at) AS oldest_waiting
                     FROM {events} WHERE commit_order >= h.horizon) w"
            ),
            lag: format!(
                "SELECT count(*) AS behind, min(recorded_at) AS oldest FROM (
                     SELECT recorded_at FROM {events}
                     WHERE (commit_order, global_position) > ($1, $2)
                       AND commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                     ORDER BY commit_order, global_position LIMIT $3) e"
            ),
            oldest_running: format!(
                "SELECT {SAGA_BRIEF} FROM {sagas}
                 WHERE status IN ('running', 'waiting', 'compensating')
                 ORDER BY created_at, id LIMIT 1"
            ),
            expired_leases: format!(
                "SELECT {SAGA_BRIEF} FROM {sagas}
                 WHERE status IN ('running', 'waiting', 'compensating')
                   AND lease_expires_at < now()
                 ORDER BY lease_expires_at, id LIMIT 10"
            ),
            inbox: format!(
                "SELECT consumer, status, count(*) AS n, min(dead_at) AS oldest
                 FROM {dead_letters} GROUP BY consumer, status ORDER BY consumer, status"
            ),
        }
    }
}

/// The oldest transaction with an id, in the whole cluster: the one that holds the horizon.
const OLDEST_TRANSACTION: &str = "SELECT * FROM (
        SELECT a.pid, a.datname::text AS database, a.application_name AS application,
               host(a.client_addr) AS client, a.state, left(a.query, 300) AS query,
               extract(epoch FROM now() - a.xact_start)::float8 AS age,
               age(a.backend_xid) AS xid_age, NULL::text AS gid
        FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
        UNION ALL
        SELECT NULL, p.database::text, NULL, NULL, 'prepared', NULL,
               extract(epoch FROM now() - p.prepared)::float8, age(p.transaction), p.gid
        FROM pg_prepared_xacts p
     ) t ORDER BY xid_age DESC LIMIT 1";

impl HealthCheck {
    /// Checks the tables the pool's `search_path` finds.
    pub fn new(pool: PgPool) -> Self {
        Self {
            sql: Arc::new(Sql::new(&Schema::default())),
            outbox: PgOutbox::new(pool.clone()),
            sagas: PgSagaStore::new(pool.clone()),
            checkpoints: PgCheckpointStore::new(pool.clone()),
            pool,
        }
    }

    /// Checks the tables of `schema` (validated and quoted).
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.sql = Arc::new(Sql::new(&Schema::named(schema)?));
        self.outbox = self.outbox.with_schema(schema)?;
        self.sagas = self.sagas.with_schema(schema)?;
        self.checkpoints = self.checkpoints.with_schema(schema)?;
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Reads a report.
    pub async fn report(&self) -> Result<HealthReport> {
        let (feed, at) = self.feed().await?;
        Ok(HealthReport {
            at,
            feed,
            outbox: self.outbox().await?,
            sagas: self.sagas().await?,
            projections: self.projections().await?,
            inbox: self.inbox().await?,
        })
    }

    async fn feed(&self) -> Result<(FeedHealth, DateTime<Utc>)> {
        let row: PgRow = sqlx::query(&self.sql.feed)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        let holder: Option<PgRow> = sqlx::query(OLDEST_TRANSACTION)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        let oldest_transaction = holder
            .map(|row| -> Result<OpenTransaction> {
                Ok(OpenTransaction {
                    pid: get(&row, "pid")?,
                    database: get(&row, "database")?,
                    application: get::<Option<String>>(&row, "application")?
                        .filter(|a| !a.is_empty()),
                    client: get(&row, "client")?,
                    state: get(&row, "state")?,
                    age: Duration::from_secs_f64(
                        get::<Option<f64>>(&row, "age")?.unwrap_or(0.0).max(0.0),
                    ),
                    query: get(&row, "query")?,
                    prepared_gid: get(&row, "gid")?,
                })
            })
            .transpose()?;
        let feed = FeedHealth {
            horizon: to_u64(get(&row, "horizon")?),
            head: get::<Option<i64>>(&row, "head")?.map(to_u64),
            waiting: to_u64(get(&row, "waiting")?),
            oldest_waiting: get(&row, "oldest_waiting")?,
            oldest_transaction,
        };
        Ok((feed, get(&row, "at")?))
    }

    async fn outbox(&self) -> Result<OutboxHealth> {
        let counts = self.outbox.counts().await?;
        let first_dead = if counts.dead > 0 {
            self.outbox
                .dead(5)
                .await?
                .into_iter()
                .map(|m| OutboxDead {
                    id: m.id,
                    key: m.key,
                    message_type: m.message_type,
                    attempts: m.attempts,
                    last_error: m.last_error,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(OutboxHealth {
            pending: counts.pending,
            oldest_pending_age: counts.oldest_pending_age,
            dead: counts.dead,
            published: counts.published,
            first_dead,
        })
    }

    async fn sagas(&self) -> Result<SagaHealth> {
        let stored = self.sagas.counts().await?;
        let counts = [
            SagaStatus::Running,
            SagaStatus::Waiting,
            SagaStatus::Compensating,
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::Failed,
        ]
        .into_iter()
        .map(|s| (s.as_str().to_owned(), stored.get(&s).copied().unwrap_or(0)))
        .collect();
        let brief =
            |rows: Vec<PgRow>| -> Result<Vec<SagaBrief>> { rows.iter().map(saga_brief).collect() };
        let oldest = sqlx::query(&self.sql.oldest_running)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let expired = sqlx::query(&self.sql.expired_leases)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let failed = self
            .sagas
            .list(SagaStatus::Failed, 5)
            .await?
            .into_iter()
            .map(|s| SagaBrief {
                id: s.id,
                name: s.name,
                status: s.status,
                step: s.step,
                created_at: s.created_at,
                lease_owner: s.lease_owner,
                lease_expires_at: s.lease_expires_at,
                last_error: s.last_error,
            })
            .collect();
        Ok(SagaHealth {
            counts,
            oldest_running: brief(oldest)?.into_iter().next(),
            expired_leases: brief(expired)?,
            failed,
        })
    }

    /// Every projection checkpoint with its lag (the projections part of a report).
    pub async fn projections(&self) -> Result<Vec<ProjectionHealth>> {
        let mut all = Vec::new();
        for checkpoint in self.checkpoints.list().await? {
            let row: PgRow = sqlx::query(&self.sql.lag)
                .bind(to_i64(checkpoint.position.commit))
                .bind(to_i64(checkpoint.position.sequence))
                .bind(to_i64(LAG_CAP))
                .fetch_one(&self.pool)
                .await
                .map_err(Error::storage)?;
            all.push(ProjectionHealth {
                position: checkpoint.position.to_string(),
                status: checkpoint.status,
                applied: checkpoint.applied,
                lag: to_u64(get(&row, "behind")?),
                oldest_unapplied: get(&row, "oldest")?,
                failure: checkpoint.failure,
                owner: checkpoint.owner,
                lease_until: checkpoint.lease_until,
                key: checkpoint.key,
            });
        }
        Ok(all)
    }

    async fn inbox(&self) -> Result<InboxHealth> {
        let rows = sqlx::query(&self.sql.inbox)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut health = InboxHealth {
            dead: 0,
            requeued: 0,
            dead_by_consumer: BTreeMap::new(),
            oldest_dead: None,
        };
        for row in &rows {
            let n = to_u64(get(row, "n")?);
            if get::<String>(row, "status")? == "requeued" {
                health.requeued += n;
                continue;
            }
            health.dead += n;
            health.dead_by_consumer.insert(get(row, "consumer")?, n);
            let oldest: DateTime<Utc> = get(row, "oldest")?;
            health.oldest_dead = Some(health.oldest_dead.map_or(oldest, |o| o.min(oldest)));
        }
        Ok(health)
    }
}

fn saga_brief(row: &PgRow) -> Result<SagaBrief> {
    let status: String = get(row, "status")?;
    Ok(SagaBrief {
        id: get(row, "id")?,
        name: get(row, "name")?,
        status: SagaStatus::parse(&status).ok_or_else(|| Error::Invalid {
            what: "saga status",
            value: status.clone(),
            reason: "not a status this version knows",
        })?,
        step: to_u32(get(row, "step")?),
        created_at: get(row, "created_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get(row, "lease_expires_at")?,
        last_error: get(row, "last_error")?,
    })
}

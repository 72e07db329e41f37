//! The PostgreSQL saga store: `saga_state`, claimed with `FOR UPDATE SKIP LOCKED` and leases.

use crate::sql::{Schema, count, to_i32, to_i64, to_u32, to_u64};
use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::UnitOfWork;
use dtx::saga::{
    Cancel, Cancellation, CompletedStep, Correlated, Delivery, SagaEvent, SagaRecord, SagaSave,
    SagaStatus, SagaStore,
};
use dtx::{Error, Result};
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The columns of a saga, as [`SagaRow`] reads them.
const COLUMNS: &str = "id, name, definition_version, definition_fingerprint, status, data, step, completed, received, attempts, next_run_at, \
     deadline, awaiting, last_error, correlation_id, version, lease_owner, lease_expires_at, \
     created_at, updated_at";

/// Sagas in PostgreSQL. Workers in any number of processes share them: a claim takes due
/// sagas with `FOR UPDATE SKIP LOCKED` and marks them with a lease; every transition is
/// saved only while the worker still holds the lease at the version it read.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct PgSagaStore {
    pool: PgPool,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for PgSagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSagaStore").finish_non_exhaustive()
    }
}

impl PgSagaStore {
    /// A store on a migrated database (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(Sql::new(&Schema::default())),
        }
    }

    /// Uses the table in `schema` (see [`crate::migrate_in_schema`]); the name is validated and
    /// quoted.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.sql = Arc::new(Sql::new(&Schema::named(schema)?));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The statements workers and operators run most, by name, for `EXPLAIN` checks.
    pub fn statements(&self) -> [(&'static str, &str); 5] {
        let sql = &*self.sql;
        [
            ("claim", &sql.claim),
            ("save", &sql.save),
            ("save_many", &sql.save_many),
            ("deliver", &sql.deliver),
            ("list", &sql.list),
        ]
    }

    /// [`SagaStore::correlated`] on `executor`.
    async fn correlated_on<'c, E>(
        &self,
        executor: E,
        correlation_id: Uuid,
    ) -> Result<Vec<Correlated>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let rows: Vec<(Uuid, String, String, i32, Option<String>)> =
            sqlx::query_as(&self.sql.correlated)
                .bind(correlation_id)
                .fetch_all(executor)
                .await
                .map_err(Error::storage)?;
        rows.into_iter()
            .map(|(id, name, status, step, awaiting)| {
                let status = SagaStatus::parse(&status).ok_or_else(|| {
                    Error::storage(format!("saga {id} has the unknown status `{status}`"))
                })?;
                Ok(Correlated {
                    id,
                    name,
                    status,
                    step: to_u32(step),
                    awaiting,
                })
            })
            .collect()
    }

    async fn insert_on<'c, E>(&self, executor: E, r: &SagaRecord) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        r.check_storable()?;
        sqlx::query(&self.sql.insert)
            .bind(r.id)
            .bind(&r.name)
            .bind(r.status.as_str())
            .bind(Json(&r.data))
            .bind(to_i32(r.step))
            .bind(Json(&r.completed))
            .bind(Json(&r.received))
            .bind(to_i32(r.attempts))
            .bind(r.next_run_at)
            .bind(r.deadline)
            .bind(&r.awaiting)
            .bind(&r.last_error)
            .bind(r.correlation_id)
            .bind(to_i64(r.version))
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(definition_version(r)?)
            .bind(&r.definition_fingerprint)
            .execute(executor)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }
}

impl PgSagaStore {
    /// Writes `saves` (checked already) in one `save_many` statement; returns the ids of the
    /// sagas it saved (the others' leases were lost).
    async fn save_rows(
        &self,
        saves: &[&SagaSave<'_>],
    ) -> std::result::Result<Vec<Uuid>, sqlx::Error> {
        let n = saves.len();
        let mut ids = Vec::with_capacity(n);
        let mut owners = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut data = Vec::with_capacity(n);
        let mut steps = Vec::with_capacity(n);
        let mut completed = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut next_run_at = Vec::with_capacity(n);
        let mut deadlines = Vec::with_capacity(n);
        let mut awaiting = Vec::with_capacity(n);
        let mut last_errors = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut lease_owners = Vec::with_capacity(n);
        let mut lease_expiries = Vec::with_capacity(n);
        let mut updated = Vec::with_capacity(n);
        let mut definition_versions = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);
        for save in saves {
            let r = save.record;
            ids.push(r.id);
            owners.push(save.owner);
            statuses.push(r.status.as_str());
            data.push(Json(&r.data));
            steps.push(to_i32(r.step));
            completed.push(Json(&r.completed));
            received.push(Json(&r.received));
            attempts.push(to_i32(r.attempts));
            next_run_at.push(r.next_run_at);
            deadlines.push(r.deadline);
            awaiting.push(r.awaiting.as_deref());
            last_errors.push(r.last_error.as_deref());
            versions.push(to_i64(r.version));
            lease_owners.push(save.lease_until.map(|_| save.owner));
            lease_expiries.push(save.lease_until);
            updated.push(r.updated_at);
            definition_versions.push(to_i32(r.definition_version));
            fingerprints.push(r.definition_fingerprint.as_deref());
        }
        sqlx::query_scalar(&self.sql.save_many)
            .bind(&ids)
            .bind(&owners)
            .bind(&statuses)
            .bind(&data)
            .bind(&steps)
            .bind(&completed)
            .bind(&received)
            .bind(&attempts)
            .bind(&next_run_at)
            .bind(&deadlines)
            .bind(&awaiting)
            .bind(&last_errors)
            .bind(&versions)
            .bind(&lease_owners)
            .bind(&lease_expiries)
            .bind(&updated)
            .bind(&definition_versions)
            .bind(&fingerprints)
            .fetch_all(&self.pool)
            .await
    }
}

/// The statements, built once with the (validated, quoted) schema.
struct Sql {
    insert: String,
    claim: String,
    save: String,
    save_many: String,
    deliver: String,
    correlated: String,
    get: String,
    list: String,
    counts: String,
    retry_failed: String,
    cancel: String,
}

impl Sql {
    /// The statements on the table of `schema`.
    fn new(schema: &Schema) -> Self {
        let table = schema.table("saga_state");
        Self {
            insert: format!(
                "INSERT INTO {table} (id, name, status, data, step, completed, received, \
                 attempts, next_run_at, deadline, awaiting, last_error, correlation_id, version, \
                 created_at, updated_at, definition_version, definition_fingerprint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18)
                 ON CONFLICT (id) DO NOTHING"
            ),
            correlated: format!(
                "SELECT id, name, status, step, awaiting FROM {table}
                 WHERE correlation_id = $1
                   AND status IN ('running', 'waiting', 'compensating')
                 ORDER BY created_at, id"
            ),
            claim: format!(
                "WITH due AS (
                    SELECT id FROM {table}
                    WHERE status IN ('running', 'waiting', 'compensating') AND next_run_at <= $1
                      AND (lease_expires_at IS NULL OR lease_expires_at < $1)
                    ORDER BY next_run_at
                    LIMIT $4
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE {table} s SET lease_owner = $2, lease_expires_at = $3
                 FROM due WHERE s.id = due.id
                 RETURNING s.*"
            ),
            save: format!(
                "UPDATE {table} SET status = $3, data = $4, step = $5, completed = $6, \
                 received = $7, attempts = $8, next_run_at = $9, deadline = $10, awaiting = $11, \
                 last_error = $12, version = $13, lease_owner = $14, lease_expires_at = $15, \
                 updated_at = $16, definition_version = $17, definition_fingerprint = $18
                 WHERE id = $1 AND lease_owner = $2 AND version = $13 - 1"
            ),
            // `save` for many sagas: each row's own lease and version check, one statement.
            save_many: format!(
                "UPDATE {table} s SET status = v.status, data = v.data, step = v.step,
                     completed = v.completed, received = v.received,
                     attempts = v.attempts, next_run_at = v.next_run_at, deadline = v.deadline,
                     awaiting = v.awaiting, last_error = v.last_error, version = v.version,
                     lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at,
                     updated_at = v.updated_at, definition_version = v.definition_version,
                     definition_fingerprint = v.definition_fingerprint
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[],
                     $6::jsonb[], $7::jsonb[], $8::int4[], $9::timestamptz[], $10::timestamptz[],
                     $11::text[], $12::text[], $13::int8[], $14::text[], $15::timestamptz[],
                     $16::timestamptz[], $17::int4[], $18::text[])
                     AS v(id, owner, status, data, step, completed, received, attempts,
                          next_run_at, deadline, awaiting, last_error, version, lease_owner,
                          lease_expires_at, updated_at, definition_version,
                          definition_fingerprint)
                 WHERE s.id = v.id AND s.lease_owner = v.owner AND s.version = v.version - 1
                 RETURNING s.id"
            ),
            deliver: format!(
                "UPDATE {table}
                 SET received = received || jsonb_build_object($2::text, $3::jsonb),
                     status = 'running', awaiting = NULL, next_run_at = $4,
                     version = version + 1, updated_at = $4
                 WHERE id = $1 AND status = 'waiting' AND awaiting = $2
                 RETURNING id"
            ),
            get: format!("SELECT {COLUMNS} FROM {table} WHERE id = $1"),
            list: format!("SELECT * FROM {table} WHERE status = $1 ORDER BY created_at LIMIT $2"),
            counts: format!("SELECT status, count(*) AS n FROM {table} GROUP BY status"),
            retry_failed: format!(
                "UPDATE {table} SET status = 'compensating', attempts = 0, next_run_at = $2,
                     lease_owner = NULL, lease_expires_at = NULL, version = version + 1,
                     updated_at = $2
                 WHERE id = $1 AND status = 'failed'"
            ),
            cancel: format!(
                "UPDATE {table} SET status = 'compensating', attempts = 0, awaiting = NULL,
                     next_run_at = $2, last_error = $3,
                     received = received || jsonb_build_object('{cancelled}', $4::jsonb),
                     lease_owner = NULL, lease_expires_at = NULL, version = version + 1,
                     updated_at = $2
                 WHERE id = $1 AND status IN ('running', 'waiting')
                   AND (lease_expires_at IS NULL OR lease_expires_at < $2)
                 RETURNING id",
                cancelled = dtx::saga::cancel::CANCELLED
            ),
        }
    }
}

/// The record's definition version as stored (`INTEGER`, at least 1).
fn definition_version(r: &SagaRecord) -> Result<i32> {
    i32::try_from(r.definition_version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| Error::Invalid {
            what: "saga definition version",
            value: r.definition_version.to_string(),
            reason: "versions are 1 to 2^31 - 1",
        })
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A saga's row.
#[derive(sqlx::FromRow)]
struct SagaRow {
    id: Uuid,
    name: String,
    definition_version: i32,
    definition_fingerprint: Option<String>,
    status: String,
    data: Json<serde_json::Value>,
    step: i32,
    completed: Json<Vec<CompletedStep>>,
    received: Json<HashMap<String, serde_json::Value>>,
    attempts: i32,
    next_run_at: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    awaiting: Option<String>,
    last_error: Option<String>,
    correlation_id: Option<Uuid>,
    version: i64,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SagaRow> for SagaRecord {
    type Error = Error;

    fn try_from(row: SagaRow) -> Result<Self> {
        let status = SagaStatus::parse(&row.status).ok_or_else(|| Error::Invalid {
            what: "saga status",
            value: row.status.clone(),
            reason: "not a status this version knows",
        })?;
        Ok(SagaRecord {
            id: row.id,
            name: row.name,
            definition_version: to_u32(row.definition_version),
            definition_fingerprint: row.definition_fingerprint,
            status,
            data: row.data.0,
            step: to_u32(row.step),
            completed: row.completed.0,
            received: row.received.0,
            attempts: to_u32(row.attempts),
            next_run_at: row.next_run_at,
            deadline: row.deadline,
            awaiting: row.awaiting,
            last_error: row.last_error,
            correlation_id: row.correlation_id,
            version: to_u64(row.version),
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn insert(&self, record: &SagaRecord) -> Result<()> {
        self.insert_on(&self.pool, record).await
    }

    async fn insert_in(&self, uow: &mut dyn UnitOfWork, record: &SagaRecord) -> Result<()> {
        self.insert_on(PgUnitOfWork::of(uow).await?, record).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<SagaRecord>> {
        let rows: Vec<SagaRow> = sqlx::query_as(&self.sql.claim)
            .bind(now)
            .bind(owner)
            .bind(now + chrono(lease))
            .bind(count(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.into_iter().map(SagaRecord::try_from).collect()
    }

    async fn save(
        &self,
        r: &SagaRecord,
        owner: &str,
        lease_until: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        r.check_storable()?;
        let done = sqlx::query(&self.sql.save)
            .bind(r.id)
            .bind(owner)
            .bind(r.status.as_str())
            .bind(Json(&r.data))
            .bind(to_i32(r.step))
            .bind(Json(&r.completed))
            .bind(Json(&r.received))
            .bind(to_i32(r.attempts))
            .bind(r.next_run_at)
            .bind(r.deadline)
            .bind(&r.awaiting)
            .bind(&r.last_error)
            .bind(to_i64(r.version))
            .bind(lease_until.map(|_| owner))
            .bind(lease_until)
            .bind(r.updated_at)
            .bind(definition_version(r)?)
            .bind(&r.definition_fingerprint)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_many(&self, saves: &[SagaSave<'_>]) -> Vec<Result<bool>> {
        // Each save's own checks first: one that cannot be stored fails alone.
        let mut outcomes: Vec<Option<Result<bool>>> = saves
            .iter()
            .map(|save| {
                match save
                    .record
                    .check_storable()
                    .and(definition_version(save.record))
                {
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                }
            })
            .collect();
        let writable: Vec<&SagaSave<'_>> = saves
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_none())
            .map(|(save, _)| save)
            .collect();
        if !writable.is_empty() {
            match self.save_rows(&writable).await {
                Ok(written) => {
                    for (save, outcome) in saves.iter().zip(&mut outcomes) {
                        if outcome.is_none() {
                            *outcome = Some(Ok(written.contains(&save.record.id)));
                        }
                    }
                }
                Err(error) => {
                    for (save, outcome) in saves.iter().zip(&mut outcomes) {
                        if outcome.is_none() {
                            *outcome = Some(Err(Error::storage(format!(
                                "saving saga {} (version {}) failed with {} other transitions, none saved: {error}",
                                save.record.id,
                                save.record.version,
                                writable.len() - 1
                            ))));
                        }
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Ok(false)))
            .collect()
    }

    async fn get(&self, id: Uuid) -> Result<Option<SagaRecord>> {
        let row: Option<SagaRow> = sqlx::query_as(&self.sql.get)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        row.map(SagaRecord::try_from).transpose()
    }

    async fn deliver(&self, id: Uuid, event: &SagaEvent, now: DateTime<Utc>) -> Result<Delivery> {
        event.check_storable(id)?;
        let delivered = sqlx::query(&self.sql.deliver)
            .bind(id)
            .bind(&event.event_type)
            .bind(Json(&event.payload))
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        if delivered.is_some() {
            return Ok(Delivery::Delivered);
        }
        match self.get(id).await? {
            None => Ok(Delivery::NotFound),
            Some(saga) => Ok(Delivery::NotAwaited {
                status: saga.status,
                awaiting: saga.awaiting,
            }),
        }
    }

    async fn correlated(&self, correlation_id: Uuid) -> Result<Vec<Correlated>> {
        self.correlated_on(&self.pool, correlation_id).await
    }

    async fn correlated_in(
        &self,
        uow: &mut dyn UnitOfWork,
        correlation_id: Uuid,
    ) -> Result<Vec<Correlated>> {
        self.correlated_on(PgUnitOfWork::of(uow).await?, correlation_id)
            .await
    }

    async fn list(&self, status: SagaStatus, limit: usize) -> Result<Vec<SagaRecord>> {
        let rows: Vec<SagaRow> = sqlx::query_as(&self.sql.list)
            .bind(status.as_str())
            .bind(count(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.into_iter().map(SagaRecord::try_from).collect()
    }

    async fn counts(&self) -> Result<HashMap<SagaStatus, u64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.sql.counts)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(rows
            .into_iter()
            .filter_map(|(status, n)| Some((SagaStatus::parse(&status)?, to_u64(n))))
            .collect())
    }

    async fn retry_failed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(&self.sql.retry_failed)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel(
        &self,
        id: Uuid,
        cancellation: &Cancellation,
        now: DateTime<Utc>,
    ) -> Result<Cancel> {
        cancellation.check_storable(id)?;
        // The saga may change between a refused update and the read that says why: a lease
        // released meanwhile is tried again (a few times; then it is reported busy).
        for _ in 0..3 {
            let cancelled = sqlx::query(&self.sql.cancel)
                .bind(id)
                .bind(now)
                .bind(cancellation.last_error())
                .bind(Json(cancellation.record(now)))
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::storage)?;
            if cancelled.is_some() {
                return Ok(Cancel::Cancelled);
            }
            let Some(saga) = self.get(id).await? else {
                return Ok(Cancel::NotFound);
            };
            if !matches!(saga.status, SagaStatus::Running | SagaStatus::Waiting) {
                return Ok(Cancel::NotCancellable {
                    status: saga.status,
                });
            }
            if let (Some(owner), Some(until)) = (saga.lease_owner, saga.lease_expires_at)
                && until >= now
            {
                return Ok(Cancel::Busy { owner, until });
            }
        }
        Ok(Cancel::Busy {
            owner: String::new(),
            until: now,
        })
    }
}

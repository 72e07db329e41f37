//! The PostgreSQL saga store: `saga_state`, claimed with `FOR UPDATE SKIP LOCKED` and leases.

use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::UnitOfWork;
use dtx::saga::{CompletedStep, Delivery, SagaEvent, SagaRecord, SagaStatus, SagaStore};
use dtx::{Error, Result};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

const COLUMNS: &str = "id, name, status, data, step, completed, received, attempts, next_run_at, \
     deadline, awaiting, last_error, correlation_id, version, lease_owner, lease_expires_at, \
     created_at, updated_at";

/// Sagas in PostgreSQL. Workers in any number of processes share them: a claim takes due
/// sagas with `FOR UPDATE SKIP LOCKED` and marks them with a lease; every transition is
/// saved only while the worker still holds the lease at the version it read.
#[derive(Debug, Clone)]
pub struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    /// A store on a migrated database (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every statement this store issues, for `EXPLAIN` checks.
    pub fn statements() -> [(&'static str, &'static str); 4] {
        [
            ("claim", CLAIM),
            ("save", SAVE),
            ("deliver", DELIVER),
            ("list", LIST),
        ]
    }
}

const INSERT: &str = "INSERT INTO saga_state (id, name, status, data, step, completed, received, \
     attempts, next_run_at, deadline, awaiting, last_error, correlation_id, version, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

const CLAIM: &str = "WITH due AS (
        SELECT id FROM saga_state
        WHERE status IN ('running', 'waiting', 'compensating') AND next_run_at <= $1
          AND (lease_expires_at IS NULL OR lease_expires_at < $1)
        ORDER BY next_run_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED
     )
     UPDATE saga_state s SET lease_owner = $2, lease_expires_at = $3
     FROM due WHERE s.id = due.id
     RETURNING s.*";

const SAVE: &str = "UPDATE saga_state SET status = $3, data = $4, step = $5, completed = $6, \
     received = $7, attempts = $8, next_run_at = $9, deadline = $10, awaiting = $11, \
     last_error = $12, version = $13, lease_owner = $14, lease_expires_at = $15, updated_at = $16
     WHERE id = $1 AND lease_owner = $2 AND version = $13 - 1";

const DELIVER: &str = "UPDATE saga_state
     SET received = received || jsonb_build_object($2::text, $3::jsonb), status = 'running',
         awaiting = NULL, next_run_at = $4, version = version + 1, updated_at = $4
     WHERE id = $1 AND status = 'waiting' AND awaiting = $2
     RETURNING id";

const LIST: &str = "SELECT * FROM saga_state WHERE status = $1 ORDER BY created_at LIMIT $2";

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

async fn insert(conn: &mut PgConnection, r: &SagaRecord) -> Result<()> {
    sqlx::query(INSERT)
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
        .execute(conn)
        .await
        .map_err(Error::storage)?;
    Ok(())
}

fn record(row: &PgRow) -> Result<SagaRecord> {
    let status: String = row.try_get("status").map_err(Error::storage)?;
    let Json(completed): Json<Vec<CompletedStep>> =
        row.try_get("completed").map_err(Error::storage)?;
    let Json(received): Json<HashMap<String, serde_json::Value>> =
        row.try_get("received").map_err(Error::storage)?;
    let Json(data): Json<serde_json::Value> = row.try_get("data").map_err(Error::storage)?;
    Ok(SagaRecord {
        id: row.try_get("id").map_err(Error::storage)?,
        name: row.try_get("name").map_err(Error::storage)?,
        status: SagaStatus::parse(&status).ok_or_else(|| Error::Invalid {
            what: "saga status",
            value: status.clone(),
            reason: "not a status this version knows",
        })?,
        data,
        step: u32::try_from(row.try_get::<i32, _>("step").map_err(Error::storage)?).unwrap_or(0),
        completed,
        received,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(Error::storage)?)
            .unwrap_or(0),
        next_run_at: row.try_get("next_run_at").map_err(Error::storage)?,
        deadline: row.try_get("deadline").map_err(Error::storage)?,
        awaiting: row.try_get("awaiting").map_err(Error::storage)?,
        last_error: row.try_get("last_error").map_err(Error::storage)?,
        correlation_id: row.try_get("correlation_id").map_err(Error::storage)?,
        version: u64::try_from(row.try_get::<i64, _>("version").map_err(Error::storage)?)
            .unwrap_or(0),
        lease_owner: row.try_get("lease_owner").map_err(Error::storage)?,
        lease_expires_at: row.try_get("lease_expires_at").map_err(Error::storage)?,
        created_at: row.try_get("created_at").map_err(Error::storage)?,
        updated_at: row.try_get("updated_at").map_err(Error::storage)?,
    })
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn insert(&self, record: &SagaRecord) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(Error::storage)?;
        insert(&mut conn, record).await
    }

    async fn insert_in(&self, uow: &mut dyn UnitOfWork, record: &SagaRecord) -> Result<()> {
        insert(PgUnitOfWork::of(uow)?, record).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<SagaRecord>> {
        let rows = sqlx::query(CLAIM)
            .bind(now)
            .bind(owner)
            .bind(now + chrono(lease))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(record).collect()
    }

    async fn save(
        &self,
        r: &SagaRecord,
        owner: &str,
        lease_until: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let done = sqlx::query(SAVE)
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
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get(&self, id: Uuid) -> Result<Option<SagaRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM saga_state WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        row.as_ref().map(record).transpose()
    }

    async fn deliver(&self, id: Uuid, event: &SagaEvent, now: DateTime<Utc>) -> Result<Delivery> {
        let delivered = sqlx::query(DELIVER)
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

    async fn list(&self, status: SagaStatus, limit: usize) -> Result<Vec<SagaRecord>> {
        let rows = sqlx::query(LIST)
            .bind(status.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(record).collect()
    }

    async fn counts(&self) -> Result<HashMap<SagaStatus, u64>> {
        let rows = sqlx::query("SELECT status, count(*) AS n FROM saga_state GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut counts = HashMap::new();
        for row in rows {
            let status: String = row.try_get("status").map_err(Error::storage)?;
            let n: i64 = row.try_get("n").map_err(Error::storage)?;
            if let Some(status) = SagaStatus::parse(&status) {
                counts.insert(status, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(counts)
    }

    async fn retry_failed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE saga_state SET status = 'compensating', attempts = 0, next_run_at = $2,
                 lease_owner = NULL, lease_expires_at = NULL, version = version + 1, updated_at = $2
             WHERE id = $1 AND status = 'failed'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(Error::storage)?;
        Ok(done.rows_affected() == 1)
    }
}

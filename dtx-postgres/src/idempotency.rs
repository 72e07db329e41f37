use crate::deferred::{KeyRecord, PgDeferredUnitOfWork};
use crate::sql::{Schema, count};
use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::UnitOfWork;
use dtx::idempotency::{
    Claim, ClaimRequest, DEFAULT_MAX_RESPONSE_BYTES, Fingerprint, IdempotencyError, IdempotencyKey,
    IdempotencyRecord, IdempotencyStatus, IdempotencyStore, Lease, Scope,
};
use sqlx::PgConnection;
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often a claim is re-run when a concurrent claim committed the row between this
/// statement's snapshot and its insert (the row is visible to the next statement).
const CLAIM_ATTEMPTS: usize = 10;

/// The PostgreSQL idempotency store, on the `idempotency_keys` table.
///
/// - A claim is **one statement**: it reads the row through the primary key `(scope, key)`,
///   takes over an expired record or a timed-out lock, or inserts a new record, and returns
///   what the caller needs (the stored response, the holder's lock, a mismatch). A replay
///   writes and locks nothing.
/// - [`IdempotencyStore::claim_in`] and [`IdempotencyStore::complete_in`] run in a
///   [`PgUnitOfWork`](crate::PgUnitOfWork), so a record is claimed and completed **in the
///   transaction that appends the command's events**: the result and the events commit or roll
///   back together, and a concurrent duplicate waits for that transaction, then replays.
/// - Times come from the database's clock, so every instance agrees on expiry and locks.
///
/// Clones share the pool.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use dtx::idempotency::{Claim, ClaimRequest, Fingerprint, IdempotencyKey, IdempotencyStore, Scope};
/// use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, UnitOfWork};
/// use dtx_postgres::{PgEventStore, PgIdempotencyStore, PgUnitOfWork};
///
/// let (events, keys) = (PgEventStore::new(pool.clone()), PgIdempotencyStore::new(pool.clone()));
/// let request = ClaimRequest::new(
///     Scope::new("customer-7")?,
///     IdempotencyKey::new("0b7e6c1a-charge")?,
///     Fingerprint::of(br#"{"amount":100}"#),
/// );
/// let mut uow = PgUnitOfWork::begin(&pool).await?;
/// match keys.claim_in(&mut uow, &request).await? {
///     Claim::Claimed(lease) => {
///         let stream = StreamId::new("Payment-1")?;
///         let event = NewEvent::from_json("Charged", &serde_json::json!({"amount": 100}))?;
///         events.append_in(&mut uow, &stream, ExpectedVersion::NoStream, vec![event]).await?;
///         keys.complete_in(&mut uow, &lease, b"charged").await?;
///         uow.commit().await?; // the events and the stored result, or neither
///     }
///     Claim::Completed(result) => { /* a retry: answer with `result` */ }
///     Claim::InFlight { .. } | Claim::Mismatch => { /* refuse */ }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgIdempotencyStore {
    pool: PgPool,
    max_response_bytes: usize,
    sql: Arc<Sql>,
}

impl std::fmt::Debug for PgIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIdempotencyStore")
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// The statements, built once with the (validated, quoted) schema.
struct Sql {
    /// The table, schema-qualified and quoted.
    table: String,
    claim: String,
    complete: String,
    release: String,
    load: String,
    cleanup: String,
}

impl Sql {
    /// The statements on the table of `schema`.
    fn new(schema: &Schema) -> Self {
        let table = schema.table("idempotency_keys");
        Self {
            table: table.clone(),
            // $1 scope, $2 key, $3 fingerprint, $4 lease token, $5 lock timeout (ms), $6 TTL (ms).
            //
            // `existing` is the row in this statement's snapshot. If it is expired, or in
            // progress with its lock timed out and the same fingerprint, `takeover` updates it
            // (re-checking the condition on the latest row version, so of two concurrent
            // takeovers one wins). If there is none, `inserted` inserts it; a concurrent insert
            // of the same key makes it insert nothing (and return no row: the caller re-runs
            // the statement, whose new snapshot sees the winner). Otherwise the row's state
            // answers. Nothing is written or locked for a replay.
            claim: format!(
                "WITH t AS (SELECT clock_timestamp() AS now),
                existing AS (
                    SELECT status, fingerprint, response, locked_until, expires_at
                    FROM {table} WHERE scope = $1 AND idempotency_key = $2
                ),
                takeover AS (
                    UPDATE {table} k
                    SET fingerprint = $3, status = 'in_progress', lease = $4,
                        locked_until = t.now + $5::float8 * interval '1 millisecond',
                        response = NULL, created_at = t.now, completed_at = NULL,
                        expires_at = t.now + $6::float8 * interval '1 millisecond'
                    FROM t
                    WHERE k.scope = $1 AND k.idempotency_key = $2
                      AND (k.expires_at <= t.now
                           OR (k.status = 'in_progress' AND k.locked_until <= t.now
                               AND k.fingerprint = $3))
                    RETURNING k.locked_until
                ),
                inserted AS (
                    INSERT INTO {table} (scope, idempotency_key, fingerprint, status, lease,
                                         locked_until, created_at, expires_at)
                    SELECT $1, $2, $3, 'in_progress', $4,
                           t.now + $5::float8 * interval '1 millisecond', t.now,
                           t.now + $6::float8 * interval '1 millisecond'
                    FROM t WHERE NOT EXISTS (SELECT 1 FROM existing)
                    ON CONFLICT (scope, idempotency_key) DO NOTHING
                    RETURNING locked_until
                )
                SELECT 'claimed' AS outcome, locked_until, NULL::bytea AS response FROM takeover
                UNION ALL
                SELECT 'claimed', locked_until, NULL FROM inserted
                UNION ALL
                SELECT CASE
                         WHEN e.expires_at <= t.now THEN 'in_flight'
                         WHEN e.fingerprint <> $3 THEN 'mismatch'
                         WHEN e.status = 'completed' THEN 'completed'
                         ELSE 'in_flight'
                       END,
                       e.locked_until,
                       CASE WHEN e.status = 'completed' AND e.fingerprint = $3
                                 AND e.expires_at > t.now THEN e.response END
                FROM existing e, t
                WHERE NOT EXISTS (SELECT 1 FROM takeover)"
            ),
            complete: format!(
                "UPDATE {table}
                 SET status = 'completed', response = $4, lease = NULL, locked_until = NULL,
                     completed_at = clock_timestamp()
                 WHERE scope = $1 AND idempotency_key = $2 AND lease = $3"
            ),
            release: format!(
                "DELETE FROM {table} WHERE scope = $1 AND idempotency_key = $2 AND lease = $3"
            ),
            load: format!(
                "SELECT fingerprint, status, response, locked_until, created_at, completed_at,
                        expires_at
                 FROM {table} WHERE scope = $1 AND idempotency_key = $2"
            ),
            // Oldest first through the expiry index, skipping rows another cleaner (or a
            // claim taking one over) has locked. `now()` is the statement's start here (it
            // runs in its own transaction), stable, so the index bounds the scan.
            cleanup: format!(
                "DELETE FROM {table} k
                 USING (
                     SELECT scope, idempotency_key FROM {table}
                     WHERE expires_at <= now()
                       AND (status = 'completed' OR locked_until <= now())
                     ORDER BY expires_at
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED
                 ) d
                 WHERE k.scope = d.scope AND k.idempotency_key = d.idempotency_key"
            ),
        }
    }
}

impl PgIdempotencyStore {
    /// A store on a pool whose database has the dtx tables (see [`crate::migrate`]), accepting
    /// results up to [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            sql: Arc::new(Sql::new(&Schema::default())),
        }
    }

    /// Uses the table in `schema` (see [`crate::migrate_in_schema`]); the name is validated and
    /// quoted.
    pub fn with_schema(mut self, schema: &str) -> dtx::Result<Self> {
        self.sql = Arc::new(Sql::new(&Schema::named(schema)?));
        Ok(self)
    }

    /// Sets the largest result accepted (at most 1 GiB, PostgreSQL's limit for one value).
    #[must_use]
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max.min(1 << 30);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every statement this store issues, by name, for `EXPLAIN` checks and audits.
    pub fn statements(&self) -> [(&'static str, &str); 5] {
        let sql = &*self.sql;
        [
            ("idempotency_claim", &sql.claim),
            ("idempotency_complete", &sql.complete),
            ("idempotency_release", &sql.release),
            ("idempotency_load", &sql.load),
            ("idempotency_cleanup", &sql.cleanup),
        ]
    }

    /// One run of the claim statement; `None` when a concurrent claim committed the row after
    /// this statement's snapshot was taken (run it again).
    async fn claim_once<'c, E>(
        &self,
        executor: E,
        request: &ClaimRequest,
        token: Uuid,
    ) -> Result<Option<Claim>, IdempotencyError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let row: Result<Option<ClaimRow>, _> = sqlx::query_as(&self.sql.claim)
            .bind(request.scope.as_str())
            .bind(request.key.as_str())
            .bind(&request.fingerprint.as_bytes()[..])
            .bind(token)
            .bind(millis(request.lock_timeout()))
            .bind(millis(request.ttl()))
            .fetch_optional(executor)
            .await;
        let row = match row {
            Ok(row) => row,
            // `lock_timeout` (55P03) while waiting for a concurrent transaction that holds the
            // key: it is in flight, and this transaction can do nothing more.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
                return Ok(Some(Claim::InFlight {
                    locked_until: Utc::now(),
                }));
            }
            Err(error) => return Err(IdempotencyError::storage(error)),
        };
        let Some(row) = row else { return Ok(None) };
        let locked_until = row.locked_until.unwrap_or_else(Utc::now);
        Ok(Some(match row.outcome.as_str() {
            "claimed" => Claim::Claimed(Lease::new(
                request.scope.clone(),
                request.key.clone(),
                token,
                locked_until,
            )),
            "completed" => Claim::Completed(row.response.unwrap_or_default()),
            "mismatch" => Claim::Mismatch,
            _ => Claim::InFlight { locked_until },
        }))
    }

    async fn claim_on(
        &self,
        mut conn: Option<&mut PgConnection>,
        request: &ClaimRequest,
    ) -> Result<Claim, IdempotencyError> {
        let token = Uuid::now_v7();
        for _ in 0..CLAIM_ATTEMPTS {
            let claim = match conn.as_deref_mut() {
                Some(conn) => self.claim_once(conn, request, token).await?,
                None => self.claim_once(&self.pool, request, token).await?,
            };
            if let Some(claim) = claim {
                return Ok(claim);
            }
        }
        Err(IdempotencyError::storage(format!(
            "claim of {} did not settle after {CLAIM_ATTEMPTS} attempts",
            request.digest()
        )))
    }

    async fn complete_on<'c, E>(
        &self,
        executor: E,
        lease: &Lease,
        response: &[u8],
    ) -> Result<(), IdempotencyError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        if response.len() > self.max_response_bytes {
            return Err(IdempotencyError::ResponseTooLarge {
                key: lease.digest(),
                bytes: response.len(),
                max: self.max_response_bytes,
            });
        }
        let done = sqlx::query(&self.sql.complete)
            .bind(lease.scope().as_str())
            .bind(lease.key().as_str())
            .bind(lease.token())
            .bind(response)
            .execute(executor)
            .await
            .map_err(IdempotencyError::storage)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(IdempotencyError::LeaseLost {
                key: lease.digest(),
            })
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The row of the claim statement.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    /// `claimed`, `completed`, `mismatch` or `in_flight`.
    outcome: String,
    locked_until: Option<DateTime<Utc>>,
    /// The stored result, for `completed`.
    response: Option<Vec<u8>>,
}

/// A record's row (the `load` statement).
#[derive(sqlx::FromRow)]
struct RecordRow {
    fingerprint: Vec<u8>,
    status: String,
    response: Option<Vec<u8>>,
    locked_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

impl RecordRow {
    /// The record of `key` in `scope`.
    fn into_record(
        self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<IdempotencyRecord, IdempotencyError> {
        let fingerprint: [u8; 32] = self
            .fingerprint
            .try_into()
            .map_err(|_| IdempotencyError::storage("stored fingerprint is not 32 bytes"))?;
        let status = match self.status.as_str() {
            "completed" => IdempotencyStatus::Completed,
            _ => IdempotencyStatus::InProgress,
        };
        Ok(IdempotencyRecord {
            scope: scope.clone(),
            key: key.clone(),
            fingerprint: Fingerprint::from_bytes(fingerprint),
            status,
            response: self.response,
            locked_until: self.locked_until,
            created_at: self.created_at,
            completed_at: self.completed_at,
            expires_at: self.expires_at,
        })
    }
}

#[async_trait]
impl IdempotencyStore for PgIdempotencyStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, IdempotencyError> {
        self.claim_on(None, request).await
    }

    async fn complete(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError> {
        self.complete_on(&self.pool, lease, response).await
    }

    /// Inside the unit of work's transaction the claim's row is locked until it commits: a
    /// concurrent claim of the same key waits for the commit and then gets the stored result
    /// (or, after a rollback, claims the key itself). At `REPEATABLE READ` or `SERIALIZABLE`,
    /// a key committed by a concurrent transaction is a serialization failure: roll back and
    /// retry.
    async fn claim_in(
        &self,
        uow: &mut dyn UnitOfWork,
        request: &ClaimRequest,
    ) -> Result<Claim, IdempotencyError> {
        let conn = PgUnitOfWork::of(uow)
            .await
            .map_err(IdempotencyError::storage)?;
        self.claim_on(Some(conn), request).await
    }

    async fn complete_in(
        &self,
        uow: &mut dyn UnitOfWork,
        lease: &Lease,
        response: &[u8],
    ) -> Result<(), IdempotencyError> {
        if let Some(deferred) = PgDeferredUnitOfWork::of(uow) {
            if response.len() > self.max_response_bytes {
                return Err(IdempotencyError::ResponseTooLarge {
                    key: lease.digest(),
                    bytes: response.len(),
                    max: self.max_response_bytes,
                });
            }
            return deferred
                .complete(response)
                .map_err(IdempotencyError::storage);
        }
        let conn = PgUnitOfWork::of(uow)
            .await
            .map_err(IdempotencyError::storage)?;
        self.complete_on(conn, lease, response).await
    }

    /// A [`PgDeferredUnitOfWork`] on this store's pool that inserts the record, completed, when
    /// it commits: with the events it staged, in one statement.
    async fn begin_deferred(
        &self,
        request: &ClaimRequest,
        lock_wait: Duration,
    ) -> Result<Option<(Box<dyn UnitOfWork>, Lease)>, IdempotencyError> {
        let record = KeyRecord {
            table: self.sql.table.clone(),
            scope: request.scope.as_str().to_owned(),
            key: request.key.as_str().to_owned(),
            fingerprint: request.fingerprint.as_bytes().to_vec(),
            ttl_ms: millis(request.ttl()),
            response: None,
        };
        let lease = Lease::new(
            request.scope.clone(),
            request.key.clone(),
            Uuid::now_v7(),
            Utc::now()
                + chrono::Duration::from_std(request.lock_timeout())
                    .unwrap_or(chrono::Duration::MAX),
        );
        let uow = PgDeferredUnitOfWork::new(self.pool.clone(), lock_wait, Some(record));
        Ok(Some((Box::new(uow), lease)))
    }

    /// A [`PgUnitOfWork`] on this store's pool, its `lock_timeout` set to `lock_wait` (in the
    /// `BEGIN` itself: no extra round trip). It bounds every lock wait of the transaction,
    /// the handler's statements included.
    async fn begin(
        &self,
        lock_wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, IdempotencyError> {
        let millis = lock_wait.as_millis().clamp(1, i32::MAX as u128);
        let tx = self
            .pool
            .begin_with(format!("BEGIN; SET LOCAL lock_timeout = {millis}"))
            .await
            .map_err(IdempotencyError::storage)?;
        Ok(Some(Box::new(PgUnitOfWork::from_transaction(tx))))
    }

    async fn release(&self, lease: &Lease) -> Result<(), IdempotencyError> {
        sqlx::query(&self.sql.release)
            .bind(lease.scope().as_str())
            .bind(lease.key().as_str())
            .bind(lease.token())
            .execute(&self.pool)
            .await
            .map_err(IdempotencyError::storage)?;
        Ok(())
    }

    async fn load(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        let row: Option<RecordRow> = sqlx::query_as(&self.sql.load)
            .bind(scope.as_str())
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(IdempotencyError::storage)?;
        row.map(|row| row.into_record(scope, key)).transpose()
    }

    async fn cleanup_expired(&self, limit: usize) -> Result<usize, IdempotencyError> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(&self.sql.cleanup)
            .bind(count(limit))
            .execute(&self.pool)
            .await
            .map_err(IdempotencyError::storage)?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }
}

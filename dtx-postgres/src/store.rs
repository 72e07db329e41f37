use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::UnitOfWork;
use dtx::error::BoxError;
use dtx::{
    AppendResult, Error, EventData, EventMetadata, EventStore, ExpectedVersion, GlobalPosition,
    NewEvent, RecordedEvent, Result, Snapshot, StoreLimits, StreamId,
};
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use std::sync::Arc;
use uuid::Uuid;

/// How often an `ExpectedVersion::Any` append is retried after losing a race for a version.
const ANY_RETRIES: usize = 100;

/// The PostgreSQL event store.
///
/// - An append of any number of events is **one SQL statement** (one round trip): it checks the
///   expected version and inserts the event (scalar parameters) or the batch (`UNNEST` of
///   arrays). `Exact(n)` joins the event at version `n` (one primary-key probe) and `NoStream`
///   reads nothing: a stream that has moved on is a unique violation on the version. `Any`
///   reads the stream's last event. A unique violation on the event id tells a retry of stored
///   events, which is then settled as an idempotent success.
/// - The global feed is gap-free: see [`EventStore::read_all`] and the `event_store` migration.
/// - A connection lost after the statement was sent is [`Error::OutcomeUnknown`], never retried
///   silently; retrying the same events is safe (it succeeds as a duplicate).
///
/// Clones share the pool.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    limits: StoreLimits,
    sql: Arc<Sql>,
    outbox: bool,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("limits", &self.limits)
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

/// The statements, built once with the (validated, quoted) schema.
struct Sql {
    /// The append statements, by [`Shape`], outbox and batch: see [`Sql::append`].
    appends: [String; 12],
    stored: String,
    head: String,
    read_stream: String,
    read_stream_data: String,
    read_all: String,
    load_snapshot: String,
    save_snapshot: String,
}

/// The names of [`Sql::appends`], in its order: the expectation's shape (`any`, `new`,
/// `exact`), then one event or more, then with the outbox.
const APPEND_NAMES: [&str; 12] = [
    "append_any_one",
    "append_any_many",
    "append_any_one_outbox",
    "append_any_many_outbox",
    "append_new_one",
    "append_new_many",
    "append_new_one_outbox",
    "append_new_many_outbox",
    "append_exact_one",
    "append_exact_many",
    "append_exact_one_outbox",
    "append_exact_many_outbox",
];

/// The columns of an event row, in the order [`recorded`] reads them.
const COLUMNS: &str = "stream_id, version, global_position, commit_order, event_id, event_type, \
     schema_version, data::text AS data, correlation_id, causation_id, traceparent, recorded_at";

impl Sql {
    fn new(schema: Option<&str>) -> Self {
        let prefix = schema.map(|s| format!("{s}.")).unwrap_or_default();
        let events = format!("{prefix}event_store");
        let snapshots = format!("{prefix}event_snapshots");
        Self {
            appends: std::array::from_fn(|i| {
                let (shape, outbox, many) = Sql::append_key(i);
                append_statement(&events, shape, outbox, many)
            }),
            // One index probe per id (the LATERAL subquery with LIMIT is never flattened into a
            // hash join, whatever the statistics say).
            stored: format!(
                "SELECT e.stream_id, e.version, e.global_position, e.commit_order, i.id AS event_id
                 FROM UNNEST($1::uuid[]) AS i(id)
                 CROSS JOIN LATERAL (
                     SELECT stream_id, version, global_position, commit_order FROM {events}
                     WHERE event_id = i.id LIMIT 1
                 ) e"
            ),
            head: format!("SELECT COALESCE(MAX(version), 0) FROM {events} WHERE stream_id = $1"),
            read_stream: format!(
                "SELECT {COLUMNS} FROM {events}
                 WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            read_stream_data: format!(
                "SELECT version, event_type, schema_version, data::text AS data FROM {events}
                 WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            read_all: format!(
                "SELECT {COLUMNS} FROM {events}
                 WHERE (commit_order, global_position) > ($1, $2)
                   AND commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                 ORDER BY commit_order, global_position LIMIT $3"
            ),
            load_snapshot: format!(
                "SELECT aggregate_type, version, schema_hash, state::text AS state
                 FROM {snapshots} WHERE stream_id = $1"
            ),
            save_snapshot: format!(
                "INSERT INTO {snapshots} AS s (stream_id, aggregate_type, version, schema_hash, state)
                 VALUES ($1, $2, $3, $4, $5::jsonb)
                 ON CONFLICT (stream_id) DO UPDATE
                   SET aggregate_type = EXCLUDED.aggregate_type, version = EXCLUDED.version,
                       schema_hash = EXCLUDED.schema_hash, state = EXCLUDED.state, created_at = now()
                 WHERE s.version < EXCLUDED.version OR s.schema_hash <> EXCLUDED.schema_hash"
            ),
        }
    }
    /// The statement that appends with `shape`, with or without the outbox, one event or more.
    fn append(&self, shape: Shape, outbox: bool, many: bool) -> &str {
        &self.appends[shape as usize * 4 + usize::from(outbox) * 2 + usize::from(many)]
    }

    /// What the append statement at `index` of [`Sql::appends`] does.
    fn append_key(index: usize) -> (Shape, bool, bool) {
        let shape = [Shape::Head, Shape::New, Shape::Exact][index / 4];
        (shape, index % 4 >= 2, index % 2 == 1)
    }
}

/// The append statement for `shape` (see [`Shape`]) into the `events` table: one statement that
/// finds the stream's current version the cheapest way the expectation allows, inserts the
/// events and returns a row per stored event (none when the expectation does not hold). Stored
/// event ids are only looked up (`stored`) when it inserts nothing or hits a unique constraint.
/// One event binds scalars; more go through `UNNEST` (the planner and executor do measurably
/// less for the first). With the outbox the rows are marked for the relay (`outbox = true`):
/// the event row is its own outbox record, so the append writes nothing more, and the last
/// column it returns wakes an idle relay (see `crate::outbox`, Wake-ups, and `WAKE_CHECK`).
fn append_statement(events: &str, shape: Shape, outbox: bool, many: bool) -> String {
    const XID: &str = "pg_current_xact_id()::text::bigint";
    // The version before the first event (empty: none), the commit order, where they come
    // from, and when the insert happens at all.
    let (before, commit_order, source, filter) = match shape {
        Shape::Head => (
            "h.current",
            "h.commit_order".to_owned(),
            format!(
                "(SELECT COALESCE(max(version), 0) AS current,
                         GREATEST({XID}, COALESCE(max(commit_order), 0)) AS commit_order
                  FROM (SELECT version, commit_order FROM {events}
                        WHERE stream_id = $1 ORDER BY version DESC LIMIT 1) last) h"
            ),
            "WHERE $2::bigint IS NULL OR h.current = $2",
        ),
        Shape::New => ("", XID.to_owned(), String::new(), "WHERE $2::bigint = 0"),
        Shape::Exact => (
            "p.version",
            format!("GREATEST({XID}, p.commit_order)"),
            format!("{events} p"),
            "WHERE p.stream_id = $1 AND p.version = $2::bigint",
        ),
    };
    // The version of the event at `ord`, counted from 1.
    let nth = |ord: &str| {
        if before.is_empty() {
            ord.to_owned()
        } else {
            format!("{before} + {ord}")
        }
    };
    let (values, sources, order) = if many {
        let unnest = "UNNEST($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::uuid[],
                             $8::uuid[], $9::text[])
                      WITH ORDINALITY AS e(event_id, event_type, schema_version, data,
                                           correlation_id, causation_id, traceparent, ord)";
        (
            format!(
                "{}, {commit_order}, e.event_id, e.event_type, e.schema_version, e.data::jsonb, \
                 e.correlation_id, e.causation_id, e.traceparent",
                nth("e.ord")
            ),
            [source.as_str(), unnest],
            "ORDER BY e.ord",
        )
    } else {
        (
            format!(
                "{}, {commit_order}, $3::uuid, $4::text, $5::int4, $6::text::jsonb, $7::uuid, \
                 $8::uuid, $9::text",
                nth("1")
            ),
            [source.as_str(), ""],
            "",
        )
    };
    let sources: Vec<&str> = sources.into_iter().filter(|s| !s.is_empty()).collect();
    let from = if sources.is_empty() {
        String::new()
    } else {
        format!("FROM {}", sources.join(", "))
    };
    let (marked_column, marked) = if outbox {
        (", outbox", ", true")
    } else {
        ("", "")
    };
    let mut returning = "RETURNING version, global_position, commit_order".to_owned();
    if outbox {
        returning = format!("{returning}, {} AS woke", crate::outbox::WAKE_CHECK);
    }
    [
        format!(
            "INSERT INTO {events} (stream_id, version, commit_order, event_id, event_type, \
             schema_version, data, correlation_id, causation_id, traceparent{marked_column})"
        ),
        format!("SELECT $1, {values}{marked}"),
        from,
        filter.to_owned(),
        order.to_owned(),
        returning,
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join("\n")
}

/// How an append finds the stream's current version, chosen by the expectation: the cheapest
/// way that still checks it, since this lookup is most of what an append costs beyond a plain
/// `INSERT` (with 8 concurrent writers, the head subquery's executor nodes alone cost about a
/// tenth of the append's server time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// [`ExpectedVersion::Any`]: reads the stream's last event (`max(version)`, zero for a new
    /// stream).
    Head = 0,
    /// [`ExpectedVersion::NoStream`]: inserts from version 1 with no lookup at all; an existing
    /// stream is a unique violation on its version 1.
    New = 1,
    /// [`ExpectedVersion::Exact`] `(n)`, `n` ≥ 1: joins the event at version `n` (one
    /// primary-key probe, no sort, no aggregate); none means the stream is shorter, and a
    /// stream that is longer is a unique violation on version `n + 1`.
    Exact = 2,
}

impl Shape {
    fn of(expected: ExpectedVersion) -> Self {
        match expected.required() {
            None => Self::Head,
            Some(0) => Self::New,
            Some(_) => Self::Exact,
        }
    }
}

/// The columns of one append, as arrays for `UNNEST`.
struct Batch {
    ids: Vec<Uuid>,
    types: Vec<String>,
    versions: Vec<i32>,
    data: Vec<String>,
    correlation: Vec<Option<Uuid>>,
    causation: Vec<Option<Uuid>>,
    traceparent: Vec<Option<String>>,
}

impl Batch {
    fn new(events: Vec<NewEvent>) -> Self {
        let n = events.len();
        let mut batch = Self {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            correlation: Vec::with_capacity(n),
            causation: Vec::with_capacity(n),
            traceparent: Vec::with_capacity(n),
        };
        for e in events {
            batch.ids.push(e.event_id);
            batch.types.push(e.event_type);
            batch
                .versions
                // checked by `StoreLimits::check`
                .push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
            batch.data.push(String::from(Box::<str>::from(e.data)));
            batch.correlation.push(e.metadata.correlation_id);
            batch.causation.push(e.metadata.causation_id);
            batch.traceparent.push(e.metadata.traceparent);
        }
        batch
    }
}

/// How an append attempt ended.
enum Attempt {
    Done(AppendResult),
    /// Nothing was inserted: the stream is not at the expected version.
    WrongVersion,
    /// The version is taken (unique violation on the stream's version): the stream had moved
    /// past an `Exact`/`NoStream` expectation, or another writer took it first.
    LostRace,
    /// Some event id is stored already (unique violation on the event id).
    StoredId,
}

impl PgEventStore {
    /// A store on a pool whose database has the dtx tables (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            limits: StoreLimits::default(),
            sql: Arc::new(Sql::new(None)),
            outbox: false,
        }
    }

    /// Puts every appended event in the outbox, in the append's own statement
    /// (`EVENT_STORE_ENABLE_OUTBOX`, see [`dtx::DtxConfig::outbox_enabled`]): the event row is
    /// marked for publishing and is its own outbox record, which an [`crate::OutboxRelay`]
    /// publishes in order per stream. Off by default.
    #[must_use]
    pub fn with_outbox(mut self, enabled: bool) -> Self {
        self.outbox = enabled;
        self
    }

    /// Whether appends put their events in the outbox.
    pub fn outbox_enabled(&self) -> bool {
        self.outbox
    }

    /// Uses the tables in `schema` (see [`crate::migrate_in_schema`]); the name is validated and
    /// quoted.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        let quoted = crate::quote_identifier(schema)?;
        self.sql = Arc::new(Sql::new(Some(&quoted)));
        Ok(self)
    }

    /// Sets the batch limits.
    #[must_use]
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Every statement this store issues, by name, for `EXPLAIN` checks and audits.
    pub fn statements(&self) -> Vec<(&'static str, &str)> {
        let sql = &*self.sql;
        let appends = APPEND_NAMES
            .into_iter()
            .zip(sql.appends.iter().map(String::as_str));
        appends
            .chain([
                ("stored_events", sql.stored.as_str()),
                ("stream_version", &sql.head),
                ("read_stream", &sql.read_stream),
                ("read_stream_data", &sql.read_stream_data),
                ("read_all", &sql.read_all),
                ("load_snapshot", &sql.load_snapshot),
                ("save_snapshot", &sql.save_snapshot),
            ])
            .collect()
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends on the unit of work's connection ([`EventStore::append_in`]), so the events
    /// commit or roll back with its other writes.
    ///
    /// A conflict is [`Error::Conflict`] for every expectation, [`ExpectedVersion::Any`]
    /// included (a lost race cannot be retried inside the caller's transaction), and it usually
    /// leaves the transaction aborted: a stream that has moved past the expected version is
    /// detected by its unique constraint, which fails the statement. Roll back and retry the
    /// whole transaction. A connection failure after the statement was sent is
    /// [`Error::OutcomeUnknown`].
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        let batch = Batch::new(events);
        match self
            .append_once(&mut *conn, stream, expected, &batch)
            .await?
        {
            Attempt::Done(result) => Ok(result),
            Attempt::WrongVersion => {
                // The head as the caller's transaction sees it (it may hold its own appends).
                let current = sqlx::query_scalar::<_, i64>(&self.sql.head)
                    .bind(stream.as_str())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| classify(stream, e))?;
                self.settle(stream, expected, &batch.ids, to_u64(current))
                    .await
            }
            // The statement failed, so the caller's transaction is aborted: ask the pool.
            Attempt::LostRace | Attempt::StoredId => {
                let current = self.stream_version(stream).await?;
                self.settle(stream, expected, &batch.ids, current).await
            }
        }
    }

    async fn append_once<'c, E>(
        &self,
        executor: E,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: &Batch,
    ) -> Result<Attempt>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let sql = &*self.sql;
        let query = if let [id] = batch.ids.as_slice() {
            sqlx::query(sql.append(Shape::of(expected), self.outbox, false))
                .bind(stream.as_str())
                .bind(expected.required().map(to_i64))
                .bind(id)
                .bind(&batch.types[0])
                .bind(batch.versions[0])
                .bind(&batch.data[0])
                .bind(batch.correlation[0])
                .bind(batch.causation[0])
                .bind(&batch.traceparent[0])
        } else {
            sqlx::query(sql.append(Shape::of(expected), self.outbox, true))
                .bind(stream.as_str())
                .bind(expected.required().map(to_i64))
                .bind(&batch.ids)
                .bind(&batch.types)
                .bind(&batch.versions)
                .bind(&batch.data)
                .bind(&batch.correlation)
                .bind(&batch.causation)
                .bind(&batch.traceparent)
        };
        let rows = match query.fetch_all(executor).await {
            Ok(rows) => rows,
            Err(error) => {
                return match unique_violation(&error) {
                    Some("event_store_stream_version") => Ok(Attempt::LostRace),
                    Some("event_store_event_id") => Ok(Attempt::StoredId),
                    _ => Err(classify(stream, error)),
                };
            }
        };
        if rows.is_empty() {
            return Ok(Attempt::WrongVersion);
        }
        let mut stored = Vec::with_capacity(rows.len());
        for row in &rows {
            stored.push((
                to_u64(row.try_get("version").map_err(Error::storage)?),
                position(row)?,
            ));
        }
        Ok(Attempt::Done(result(stored, false)))
    }

    /// Decides an append that inserted nothing: a retry of stored events is an idempotent
    /// success, a partial overlap is [`Error::DuplicateEvent`], anything else a conflict.
    async fn settle(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        ids: &[Uuid],
        current: u64,
    ) -> Result<AppendResult> {
        let rows = sqlx::query(&self.sql.stored)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        if rows.is_empty() {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        let mut stored = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored_in: String = row.try_get("stream_id").map_err(Error::storage)?;
            let event_id: Uuid = row.try_get("event_id").map_err(Error::storage)?;
            if stored_in != stream.as_str() || rows.len() < ids.len() {
                return Err(Error::DuplicateEvent {
                    stream: stream.clone(),
                    event_id,
                    stored_in,
                });
            }
            stored.push((
                to_u64(row.try_get("version").map_err(Error::storage)?),
                position(row)?,
            ));
        }
        Ok(result(stored, true))
    }
}

fn position(row: &PgRow) -> Result<GlobalPosition> {
    Ok(GlobalPosition {
        commit: to_u64(row.try_get("commit_order").map_err(Error::storage)?),
        sequence: to_u64(row.try_get("global_position").map_err(Error::storage)?),
    })
}

fn result(mut rows: Vec<(u64, GlobalPosition)>, deduplicated: bool) -> AppendResult {
    rows.sort_unstable_by_key(|r| r.0);
    AppendResult {
        first_version: rows[0].0,
        last_version: rows[rows.len() - 1].0,
        positions: rows.into_iter().map(|r| r.1).collect(),
        deduplicated,
    }
}

fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

/// Sorts a failed write into "nothing was written" and "the outcome is unknown".
fn classify(stream: &StreamId, error: sqlx::Error) -> Error {
    let unknown = match &error {
        // The statement may have reached the server (and committed) before the link broke.
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection exceptions, and the server going away mid-statement
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    };
    if unknown {
        Error::OutcomeUnknown {
            stream: stream.clone(),
            source: Box::new(error) as BoxError,
        }
    } else {
        Error::storage(error)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn hash_to_i64(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

fn limit(max_count: usize) -> i64 {
    i64::try_from(max_count).unwrap_or(i64::MAX)
}

/// Decodes an event row selected with [`COLUMNS`] (by position: this runs once per event);
/// `stream` is the stream read, when known (saves decoding that column).
fn recorded(row: &PgRow, stream: Option<&StreamId>) -> Result<RecordedEvent> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
        row: &'r PgRow,
        index: usize,
    ) -> Result<T> {
        row.try_get(index).map_err(Error::storage)
    }
    let stream_id = match stream {
        Some(stream) => stream.clone(),
        // Stored stream ids were validated when they were written.
        None => StreamId::new(get::<String>(row, 0)?)?,
    };
    Ok(RecordedEvent {
        stream_id,
        version: to_u64(get(row, 1)?),
        position: GlobalPosition {
            sequence: to_u64(get(row, 2)?),
            commit: to_u64(get(row, 3)?),
        },
        event_id: get(row, 4)?,
        event_type: get(row, 5)?,
        schema_version: u32::try_from(get::<i32>(row, 6)?).unwrap_or(0),
        data: get::<String>(row, 7)?.into_boxed_str(),
        metadata: EventMetadata {
            correlation_id: get(row, 8)?,
            causation_id: get(row, 9)?,
            traceparent: get(row, 10)?,
        },
        recorded_at: get::<DateTime<Utc>>(row, 11)?,
    })
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        let count = events.len();
        let batch = Batch::new(events);
        let mut races = 0;
        loop {
            let current = match self
                .append_once(&self.pool, stream, expected, &batch)
                .await?
            {
                Attempt::Done(result) => {
                    tracing::debug!(stream = %stream, version = result.last_version, events = count, "appended");
                    return Ok(result);
                }
                Attempt::LostRace if expected == ExpectedVersion::Any && races < ANY_RETRIES => {
                    races += 1;
                    continue;
                }
                Attempt::WrongVersion | Attempt::LostRace | Attempt::StoredId => {
                    self.stream_version(stream).await?
                }
            };
            let settled = self.settle(stream, expected, &batch.ids, current).await;
            if let Ok(result) = &settled {
                tracing::debug!(stream = %stream, version = result.last_version, events = count, "append was already stored");
            }
            return settled;
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&self.sql.read_stream)
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(|row| recorded(row, Some(stream))).collect()
    }

    async fn read_stream_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        self.read_data_on(&self.pool, stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&self.sql.read_all)
            .bind(to_i64(after.commit))
            .bind(to_i64(after.sequence))
            .bind(limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter().map(|row| recorded(row, None)).collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(&self.sql.head)
            .bind(stream.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(to_u64(version))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row = sqlx::query(&self.sql.load_snapshot)
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        let Some(row) = row else { return Ok(None) };
        let hash: i64 = row.try_get("schema_hash").map_err(Error::storage)?;
        let state: String = row.try_get("state").map_err(Error::storage)?;
        Ok(Some(Snapshot {
            aggregate_type: row.try_get("aggregate_type").map_err(Error::storage)?,
            version: to_u64(row.try_get("version").map_err(Error::storage)?),
            schema_hash: u64::from_ne_bytes(hash.to_ne_bytes()),
            state: RawValue::from_string(state).map_err(Error::storage)?,
        }))
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        self.save_snapshot_on(&self.pool, stream, snapshot).await
    }

    async fn append_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.append_on(PgUnitOfWork::of(uow)?, stream, expected, events)
            .await
    }

    async fn read_stream_data_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        self.read_data_on(PgUnitOfWork::of(uow)?, stream, from_version, max_count)
            .await
    }

    async fn save_snapshot_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<()> {
        self.save_snapshot_on(PgUnitOfWork::of(uow)?, stream, snapshot)
            .await
    }
}

/// Reads and writes on a given connection (the pool's, or a unit of work's transaction).
impl PgEventStore {
    async fn read_data_on<'c, E>(
        &self,
        executor: E,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let rows = sqlx::query(&self.sql.read_stream_data)
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(limit(max_count))
            .fetch_all(executor)
            .await
            .map_err(Error::storage)?;
        rows.iter()
            .map(|row| {
                Ok(EventData {
                    version: to_u64(row.try_get(0).map_err(Error::storage)?),
                    event_type: row.try_get(1).map_err(Error::storage)?,
                    schema_version: u32::try_from(
                        row.try_get::<i32, _>(2).map_err(Error::storage)?,
                    )
                    .unwrap_or(0),
                    data: row
                        .try_get::<String, _>(3)
                        .map_err(Error::storage)?
                        .into_boxed_str(),
                })
            })
            .collect()
    }

    async fn save_snapshot_on<'c, E>(
        &self,
        executor: E,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        sqlx::query(&self.sql.save_snapshot)
            .bind(stream.as_str())
            .bind(&snapshot.aggregate_type)
            .bind(to_i64(snapshot.version))
            .bind(hash_to_i64(snapshot.schema_hash))
            .bind(snapshot.state.get())
            .execute(executor)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each append statement carries the name its place in the table gives it, and does what
    /// the name says.
    #[test]
    fn append_statements_are_where_their_names_say() {
        let sql = Sql::new(None);
        for (index, name) in APPEND_NAMES.into_iter().enumerate() {
            let (shape, outbox, many) = Sql::append_key(index);
            let statement = sql.append(shape, outbox, many);
            assert_eq!(statement, sql.appends[index]);
            let word = match shape {
                Shape::Head => "_any_",
                Shape::New => "_new_",
                Shape::Exact => "_exact_",
            };
            assert!(name.contains(word), "{name}");
            assert_eq!(name.contains("_many"), many, "{name}");
            assert_eq!(statement.contains("UNNEST"), many, "{name}");
            assert_eq!(name.ends_with("_outbox"), outbox, "{name}");
            assert_eq!(statement.contains("pg_notify"), outbox, "{name}");
            assert_eq!(
                statement.contains("max(version)"),
                shape == Shape::Head,
                "{name}"
            );
        }
    }
}

//! [`PgEventStore`]: appends, reads and snapshots.

mod combine;
mod lifecycle;
mod statements;
mod wake;

pub use combine::{Combining, CombiningStats};

use crate::deferred::{Committing, PgDeferredUnitOfWork, StagedWrite, shift_parameters};
use crate::personal::PgSubjectKeys;
use crate::restore::FeedGuard;
use crate::sql::{
    Schema, classify, count, stored_schema_version, stored_version, to_i64, to_u64,
    unique_violation,
};
use crate::uow::PgUnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtx::UnitOfWork;
use dtx::personal::PersonalData;
use dtx::{
    AppendResult, Error, EventData, EventMetadata, EventStore, ExpectedVersion, GlobalPosition,
    NewEvent, RecordedEvent, Result, Snapshot, StoreLimits, StreamId, StreamState,
};
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use statements::{APPEND_IN_NAMES, APPEND_NAMES, COMBINED_NAMES, Shape, Sql};
use std::collections::HashMap;
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
/// - With [`Combining::on`], appends issued concurrently to different streams are combined into
///   one statement and one commit while earlier ones are in flight, each keeping its own
///   expectation and outcome; a caller alone is sent at once. See [`Combining`] and
///   [`PgEventStore::with_combining`].
///
/// Clones share the pool and the combiner.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    limits: StoreLimits,
    sql: Arc<Sql>,
    /// Closing and archiving streams.
    lifecycle: Arc<lifecycle::LifecycleSql>,
    outbox: bool,
    /// The feed's waker, started by the first reader that asks (shared by clones).
    waker: Arc<std::sync::OnceLock<Arc<wake::PgFeedWaker>>>,
    /// The check before the first append that the feed is not ahead of the transaction ids
    /// (see [`crate::check_feed`]).
    guard: FeedGuard,
    /// Seals and opens personal values with their subjects' keys (`subject_keys`).
    personal: PersonalData,
    /// Combines concurrent appends (shared by clones; a new one with each builder call that
    /// changes the statements).
    combiner: Arc<combine::Combiner>,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("limits", &self.limits)
            .field("outbox", &self.outbox)
            .field("combining", &self.combiner.options())
            .finish_non_exhaustive()
    }
}

/// The columns of one append, as arrays for `UNNEST`.
pub(super) struct Batch {
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
            personal: PersonalData::new(PgSubjectKeys::new(pool.clone())),
            pool,
            limits: StoreLimits::default(),
            sql: Arc::new(Sql::new(&Schema::default())),
            lifecycle: Arc::new(lifecycle::LifecycleSql::new(&Schema::default())),
            outbox: false,
            waker: Arc::default(),
            guard: FeedGuard::new(&Schema::default()),
            combiner: Arc::new(combine::Combiner::new(Combining::default())),
        }
    }

    /// How concurrent appends are combined ([`Combining`]; on by default, [`Combining::off`]
    /// sends every append alone). Appends in a unit of work ([`EventStore::append_in`]) are
    /// never combined.
    #[must_use]
    pub fn with_combining(mut self, combining: Combining) -> Self {
        self.combiner = Arc::new(combine::Combiner::new(combining));
        self
    }

    /// What combining has done so far: statements, batch sizes, appends waiting (shared by the
    /// store's clones).
    pub fn combining_stats(&self) -> CombiningStats {
        self.combiner.stats()
    }

    /// A fresh combiner with the same options (its batches must share one statement).
    fn renew_combiner(&mut self) {
        self.combiner = Arc::new(combine::Combiner::new(self.combiner.options()));
    }

    /// Puts every appended event in the outbox, in the append's own statement
    /// (`EVENT_STORE_ENABLE_OUTBOX`, see [`dtx::DtxConfig::outbox_enabled`]): the event row is
    /// marked for publishing and is its own outbox record, which an [`crate::OutboxRelay`]
    /// publishes in order per stream. Off by default.
    #[must_use]
    pub fn with_outbox(mut self, enabled: bool) -> Self {
        self.outbox = enabled;
        self.renew_combiner();
        self
    }

    /// Whether appends put their events in the outbox.
    pub fn outbox_enabled(&self) -> bool {
        self.outbox
    }

    /// Uses the tables in `schema` (see [`crate::migrate_in_schema`]); the name is validated and
    /// quoted.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        let named = Schema::named(schema)?;
        self.guard = FeedGuard::new(&named);
        self.sql = Arc::new(Sql::new(&named));
        self.lifecycle = Arc::new(lifecycle::LifecycleSql::new(&named));
        self.personal = self
            .personal
            .with_keys(PgSubjectKeys::in_schema(self.pool.clone(), &named));
        self.waker = Arc::default();
        self.renew_combiner();
        Ok(self)
    }

    /// Wraps the subjects' keys of personal data (see [`dtx::personal`]) with a master key of
    /// yours before they are stored in `subject_keys`, and unwraps them when they are read.
    /// Set it before the first personal value is stored.
    #[must_use]
    pub fn with_key_wrap(mut self, wrap: impl dtx::personal::KeyWrap) -> Self {
        self.personal = self.personal.with_key_wrap(wrap);
        self
    }

    /// What seals and opens this store's personal values: for a consumer sharing the
    /// database that opens the sealed payloads a relay published
    /// ([`PersonalData::open_json`]).
    pub fn personal_data(&self) -> &PersonalData {
        &self.personal
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
            .zip(sql.appends.iter().map(String::as_str))
            .chain(
                APPEND_IN_NAMES
                    .into_iter()
                    .zip(sql.appends_in.iter().map(String::as_str)),
            )
            .chain(
                COMBINED_NAMES
                    .into_iter()
                    .zip(sql.combined.iter().map(String::as_str)),
            );
        appends
            .chain([
                ("stored_events", sql.stored.as_str()),
                ("stream_version", &sql.head),
                ("read_stream", &sql.read_stream),
                ("read_stream_data", &sql.read_stream_data),
                ("read_all", &sql.read_all),
                ("read_feed", &sql.read_feed),
                ("load_snapshot", &sql.load_snapshot),
                ("save_snapshot", &sql.save_snapshot),
                (
                    "read_archived_stream_data",
                    &self.lifecycle.read_archived_data,
                ),
            ])
            .chain(self.lifecycle.named())
            .collect()
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends on the unit of work's connection ([`EventStore::append_in`]), so the events
    /// commit or roll back with its other writes; everything it reads goes through that
    /// connection too.
    ///
    /// One statement (`append_in_*`, see `statements.rs`) that never fails on what the
    /// transaction can see, so it never aborts the caller's transaction: it looks the event ids
    /// up first and inserts only when none is stored and the stream is at `expected` as the
    /// transaction sees it (appended to earlier in the same transaction or not). It answers as
    /// the in-memory unit of work does: ids all stored before in this stream are an idempotent
    /// success (`deduplicated`); ids stored elsewhere or only some of them, or appended earlier
    /// in this transaction, [`Error::DuplicateEvent`]; a stream at another version,
    /// [`Error::Conflict`] for every expectation, [`ExpectedVersion::Any`] included (a lost
    /// race cannot be retried inside the caller's transaction). A race lost to a concurrent
    /// writer of the same version or event id fails the statement on its unique constraint and
    /// aborts the transaction: [`Error::RolledBack`] (its commit is too). A connection failure
    /// after the statement was sent is [`Error::OutcomeUnknown`].
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        self.append_batch_on(conn, stream, expected, &Batch::new(events))
            .await
    }

    /// [`PgEventStore::append_on`] of a batch.
    async fn append_batch_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: &Batch,
    ) -> Result<AppendResult> {
        let many = batch.ids.len() > 1;
        let rows = bind::<InRow>(
            self.sql.append_in(self.outbox, many),
            stream,
            expected,
            batch,
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|error| {
            if unique_violation(&error).is_some() {
                Error::RolledBack {
                    source: Box::new(error),
                }
            } else {
                classify(stream, error)
            }
        })?;
        let (mut inserted, mut stored, mut ours, mut head) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for row in rows {
            match row.kind {
                statements::INSERTED => inserted.push(row.place),
                statements::STORED => stored.push(row),
                statements::OURS => ours.push(row),
                _ => head = row.place.version,
            }
        }
        if !inserted.is_empty() {
            return Ok(result(inserted, false));
        }
        stored.sort_unstable_by_key(|row| row.ord);
        ours.sort_unstable_by_key(|row| row.ord);
        if let Some(first) = stored.first() {
            let all_here = stored.len() == batch.ids.len()
                && stored
                    .iter()
                    .all(|row| row.stream_id.as_deref() == Some(stream.as_str()));
            if all_here {
                return Ok(result(
                    stored.into_iter().map(|row| row.place).collect(),
                    true,
                ));
            }
            return Err(duplicate(stream, first));
        }
        if let Some(first) = ours.first() {
            return Err(duplicate(stream, first));
        }
        let conflict = Error::Conflict {
            stream: stream.clone(),
            expected,
            actual: to_u64(head),
        };
        Err(self.refused(&mut *conn, stream, conflict).await)
    }

    async fn append_once<'c, E>(
        &self,
        executor: E,
        stream: &StreamId,
        expected: ExpectedVersion,
        shape: Shape,
        batch: &Batch,
    ) -> Result<Attempt>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let sql = self.sql.append(shape, self.outbox, batch.ids.len() > 1);
        let query = bind::<Appended>(sql, stream, expected, batch);
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
        Ok(Attempt::Done(result(rows, false)))
    }

    /// An append sent alone: the plain statement of its expectation's shape, retried after a
    /// lost race when the expectation is [`ExpectedVersion::Any`], settled by a look at the
    /// stored ids when it inserted nothing.
    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: &Batch,
    ) -> Result<AppendResult> {
        let count = batch.ids.len();
        let mut races = 0;
        loop {
            match self
                .append_once(&self.pool, stream, expected, Shape::of(expected), batch)
                .await?
            {
                Attempt::Done(result) => {
                    tracing::debug!(stream = %stream, version = result.last_version, events = count, "appended");
                    return Ok(result);
                }
                // Lost to a concurrent writer: `Any` goes again on the new head.
                Attempt::LostRace if expected == ExpectedVersion::Any && races < ANY_RETRIES => {
                    races += 1;
                }
                Attempt::WrongVersion | Attempt::LostRace | Attempt::StoredId => {
                    return self.settle_refused(stream, expected, batch).await;
                }
            }
        }
    }

    /// Decides an append that inserted nothing, from the stream's head and the stored ids: a
    /// retry of stored events is an idempotent success, a partial overlap
    /// [`Error::DuplicateEvent`], a closed stream [`Error::StreamClosed`], anything else a
    /// conflict.
    async fn settle_refused(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: &Batch,
    ) -> Result<AppendResult> {
        let current = self.stream_version(stream).await?;
        let settled = match self.settle(stream, expected, &batch.ids, current).await {
            Err(error) => Err(self.refused(&self.pool, stream, error).await),
            settled => settled,
        };
        if let Ok(result) = &settled {
            tracing::debug!(stream = %stream, version = result.last_version, events = batch.ids.len(), "append was already stored");
        }
        settled
    }

    /// Appends to different streams in one statement (`append_combined`, see `statements.rs`)
    /// and so one commit on `conn`: the events each append inserted, in order (none for an
    /// append refused, which [`PgEventStore::combined_outcome`] settles).
    async fn append_combined(
        &self,
        conn: &mut PgConnection,
        appends: &[combine::Pending],
    ) -> std::result::Result<Vec<combine::Inserted>, combine::Refused> {
        let events: usize = appends.iter().map(|p| p.batch.ids.len()).sum();
        let mut streams = Vec::with_capacity(appends.len());
        let mut expected = Vec::with_capacity(appends.len());
        let (mut n, mut ord) = (Vec::with_capacity(events), Vec::with_capacity(events));
        let mut ids = Vec::with_capacity(events);
        let mut types: Vec<&str> = Vec::with_capacity(events);
        let mut versions = Vec::with_capacity(events);
        let mut data: Vec<&str> = Vec::with_capacity(events);
        let mut correlation = Vec::with_capacity(events);
        let mut causation = Vec::with_capacity(events);
        let mut traceparent: Vec<Option<&str>> = Vec::with_capacity(events);
        for (index, pending) in appends.iter().enumerate() {
            streams.push(pending.stream.as_str());
            expected.push(pending.expected.required().map(to_i64));
            let batch = &pending.batch;
            for k in 0..batch.ids.len() {
                n.push(to_i64(index as u64 + 1));
                ord.push(to_i64(k as u64 + 1));
                ids.push(batch.ids[k]);
                types.push(&batch.types[k]);
                versions.push(batch.versions[k]);
                data.push(&batch.data[k]);
                correlation.push(batch.correlation[k]);
                causation.push(batch.causation[k]);
                traceparent.push(batch.traceparent[k].as_deref());
            }
        }
        let rows: Vec<CombinedRow> = sqlx::query_as(self.sql.combined(self.outbox))
            .bind(&streams)
            .bind(&expected)
            .bind(&n)
            .bind(&ord)
            .bind(&ids)
            .bind(&types)
            .bind(&versions)
            .bind(&data)
            .bind(&correlation)
            .bind(&causation)
            .bind(&traceparent)
            .fetch_all(&mut *conn)
            .await
            .map_err(|error| {
                if crate::sql::outcome_unknown(&error) {
                    combine::Refused::Unknown(error)
                } else if matches!(error, sqlx::Error::Database(_)) {
                    combine::Refused::Whole(error)
                } else {
                    combine::Refused::Failed(error)
                }
            })?;
        // The streams of a batch are distinct: each row goes to the append of its stream.
        let index: HashMap<&str, usize> = streams
            .iter()
            .enumerate()
            .map(|(i, stream)| (*stream, i))
            .collect();
        let mut inserted: Vec<combine::Inserted> = appends
            .iter()
            .map(|_| combine::Inserted::default())
            .collect();
        for row in rows {
            if let Some(&i) = index.get(row.stream_id.as_str()) {
                inserted[i].0.push(row.place);
            }
        }
        Ok(inserted)
    }

    /// The outcome of an append of a combined statement that `inserted` those events: with
    /// none, it was refused and is settled as a lone append that inserted nothing is (a
    /// conflict, a retry of stored events, a closed stream), on connections of the pool.
    async fn combined_outcome(
        &self,
        pending: &combine::Pending,
        inserted: combine::Inserted,
    ) -> Result<AppendResult> {
        if inserted.0.is_empty() {
            return self
                .settle_refused(&pending.stream, pending.expected, &pending.batch)
                .await;
        }
        tracing::debug!(stream = %pending.stream, events = inserted.0.len(), "appended (combined)");
        Ok(result(inserted.0, false))
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
        let rows: Vec<StoredEvent> = sqlx::query_as(&self.sql.stored)
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
        let partial = rows.len() < ids.len();
        for row in rows {
            if row.stream_id != stream.as_str() || partial {
                return Err(Error::DuplicateEvent {
                    stream: stream.clone(),
                    event_id: row.event_id,
                    stored_in: row.stream_id,
                });
            }
            stored.push(row.event);
        }
        Ok(result(stored, true))
    }
}

/// A stored event's place, as an append returns it for each event it inserted.
#[derive(sqlx::FromRow)]
struct Appended {
    version: i64,
    global_position: i64,
    commit_order: i64,
}

/// A row of an append in a unit of work (see `statements::INSERTED` and the other kinds).
#[derive(sqlx::FromRow)]
struct InRow {
    kind: i32,
    /// Where a stored event id is stored.
    stream_id: Option<String>,
    event_id: Option<Uuid>,
    /// A stored id's place in the batch, counted from 1.
    ord: i64,
    /// The event's place; the head's version in the head's row.
    #[sqlx(flatten)]
    place: Appended,
}

/// A row of a combined append: an event it inserted (see `statements::combined_statement`).
#[derive(sqlx::FromRow)]
struct CombinedRow {
    stream_id: String,
    #[sqlx(flatten)]
    place: Appended,
}

/// [`Error::DuplicateEvent`] for an append to `stream` of the stored event id in `row`.
fn duplicate(stream: &StreamId, row: &InRow) -> Error {
    Error::DuplicateEvent {
        stream: stream.clone(),
        event_id: row.event_id.unwrap_or_default(),
        stored_in: row.stream_id.clone().unwrap_or_default(),
    }
}

/// Binds an append statement's parameters (see `statements::append_statement`) to `query`:
/// the stream, the expected version, then one event's scalars or the batch's arrays. A macro
/// because sqlx's `bind` is a method of each query type, not of a trait.
macro_rules! bind_append {
    ($query:expr, $stream:expr, $expected:expr, $batch:expr) => {{
        let query = $query
            .bind($stream.as_str())
            .bind($expected.required().map(to_i64));
        let batch: &Batch = $batch;
        if let [id] = batch.ids.as_slice() {
            query
                .bind(id)
                .bind(&batch.types[0])
                .bind(batch.versions[0])
                .bind(&batch.data[0])
                .bind(batch.correlation[0])
                .bind(batch.causation[0])
                .bind(&batch.traceparent[0])
        } else {
            query
                .bind(&batch.ids)
                .bind(&batch.types)
                .bind(&batch.versions)
                .bind(&batch.data)
                .bind(&batch.correlation)
                .bind(&batch.causation)
                .bind(&batch.traceparent)
        }
    }};
}

/// An append statement (`sql`) with its parameters bound: scalars for one event, arrays for
/// more (see `statements.rs`).
fn bind<'q, O>(
    sql: &'q str,
    stream: &'q StreamId,
    expected: ExpectedVersion,
    batch: &'q Batch,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    bind_append!(sqlx::query_as::<_, O>(sql), stream, expected, batch)
}

/// An append staged in a [`PgDeferredUnitOfWork`], written by its commit (see
/// `crate::deferred`) with the append statement of its expectation's [`Shape`].
struct StagedAppend {
    store: PgEventStore,
    stream: StreamId,
    expected: ExpectedVersion,
    batch: Batch,
}

impl StagedAppend {
    /// What the append answers when staged: the versions after `before`, the positions not
    /// known yet.
    fn promise(&self, before: u64) -> AppendResult {
        let n = self.batch.ids.len() as u64;
        AppendResult {
            first_version: before + 1,
            last_version: before + n,
            positions: vec![GlobalPosition::START; self.batch.ids.len()],
            deduplicated: false,
        }
    }
}

#[async_trait]
impl StagedWrite for StagedAppend {
    fn stream(&self) -> &StreamId {
        &self.stream
    }

    fn statement(&self, offset: usize) -> (String, usize, usize) {
        let sql = self.store.sql.append(
            Shape::of(self.expected),
            self.store.outbox,
            self.batch.ids.len() > 1,
        );
        (shift_parameters(sql, offset), 9, self.batch.ids.len())
    }

    fn bind<'q>(&'q self, query: Committing<'q>) -> Committing<'q> {
        bind_append!(query, &self.stream, self.expected, &self.batch)
    }

    async fn flush(&self, conn: &mut PgConnection) -> Result<()> {
        self.store.guard.ensure_on(conn).await?;
        let before = self.expected.required().unwrap_or_default();
        let result = self
            .store
            .append_batch_on(conn, &self.stream, self.expected, &self.batch)
            .await?;
        if result.deduplicated || result.first_version != before + 1 {
            return Err(Error::Conflict {
                stream: self.stream.clone(),
                expected: self.expected,
                actual: result.first_version.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// [`Error::Conflict`] with the stream's version now, or [`Error::StreamClosed`] when the
    /// append found its stream closed.
    async fn conflict(&self) -> Error {
        let conflict = match self.store.stream_version(&self.stream).await {
            Ok(actual) => Error::Conflict {
                stream: self.stream.clone(),
                expected: self.expected,
                actual,
            },
            Err(error) => return error,
        };
        self.store
            .refused(&self.store.pool, &self.stream, conflict)
            .await
    }
}

/// An event found by its id (the `stored` statement).
#[derive(sqlx::FromRow)]
struct StoredEvent {
    stream_id: String,
    event_id: Uuid,
    #[sqlx(flatten)]
    event: Appended,
}

/// The result of an append that stored (or had already stored) `rows`, not empty.
fn result(mut rows: Vec<Appended>, deduplicated: bool) -> AppendResult {
    rows.sort_unstable_by_key(|r| r.version);
    AppendResult {
        first_version: to_u64(rows[0].version),
        last_version: to_u64(rows[rows.len() - 1].version),
        positions: rows
            .into_iter()
            .map(|r| GlobalPosition {
                commit: to_u64(r.commit_order),
                sequence: to_u64(r.global_position),
            })
            .collect(),
        deduplicated,
    }
}

/// A row of `read_stream_data`: version, type, schema version, data (NULLs in the marker row
/// of an archived stream).
type DataRow = (i64, Option<String>, Option<i32>, Option<String>);

/// The events of a stream read from `from_version` as `(version, type, schema version, data)`
/// rows, checked (versions, schema versions, no gap).
fn event_data<T, V, D>(
    stream: &StreamId,
    from_version: u64,
    rows: Vec<(i64, T, V, D)>,
) -> Result<Vec<EventData>>
where
    T: Into<Option<String>>,
    V: Into<Option<i32>>,
    D: Into<Option<String>>,
{
    let events = rows
        .into_iter()
        .map(|(version, event_type, schema_version, data)| {
            let version = stored_version(stream, version)?;
            Ok(EventData {
                version,
                event_type: event_type.into().unwrap_or_default(),
                schema_version: stored_schema_version(
                    stream,
                    version,
                    schema_version.into().unwrap_or(0),
                )?,
                data: data.into().unwrap_or_default().into_boxed_str(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    dtx::store::check_contiguous(stream, from_version, events.iter().map(|e| e.version))?;
    Ok(events)
}

fn hash_to_i64(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A snapshot's row.
#[derive(sqlx::FromRow)]
struct SnapshotRow {
    aggregate_type: String,
    version: i64,
    schema_hash: i64,
    state: String,
}

/// Decodes an event row selected with [`statements::COLUMNS`] (by position, not by name as a
/// `sqlx::FromRow` would: this runs once per event read);
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
        // Taken as stored: a row today's validation would refuse must not stop the feed.
        None => StreamId::from_stored(get::<String>(row, 0)?),
    };
    let version = stored_version(&stream_id, get(row, 1)?)?;
    let schema_version = stored_schema_version(&stream_id, version, get(row, 6)?)?;
    Ok(RecordedEvent {
        stream_id,
        version,
        position: GlobalPosition {
            sequence: to_u64(get(row, 2)?),
            commit: to_u64(get(row, 3)?),
        },
        event_id: get(row, 4)?,
        event_type: get(row, 5)?,
        schema_version,
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
        self.guard.ensure(&self.pool).await?;
        let mut events = events;
        self.personal.seal_events(stream, &mut events).await?;
        self.limits.check(stream, &events)?;
        let batch = Batch::new(events);
        if !self.combiner.options().is_enabled() {
            return self.append_alone(stream, expected, &batch).await;
        }
        match self.enter(stream, expected, batch) {
            combine::Entry::Alone(slot, batch) => {
                let outcome = self.append_alone(stream, expected, &batch).await;
                drop(slot);
                outcome
            }
            combine::Entry::Queued(outcome) => outcome.await.unwrap_or_else(|_| {
                // The task sending the batch ended without an answer (the runtime shut down).
                Err(Error::OutcomeUnknown {
                    stream: stream.clone(),
                    source: Box::new(std::io::Error::other(
                        "the combined append's task ended before it answered",
                    )),
                })
            }),
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
            .bind(count(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut events = rows
            .iter()
            .map(|row| {
                if row.try_get::<i64, _>(1).map_err(Error::storage)? == 0 {
                    return Err(Error::StreamArchived {
                        stream: stream.clone(),
                    });
                }
                recorded(row, Some(stream))
            })
            .collect::<Result<Vec<_>>>()?;
        dtx::store::check_contiguous(stream, from_version, events.iter().map(|e| e.version))?;
        self.personal.open_events(&mut events).await?;
        Ok(events)
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
            .bind(count(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut events = rows
            .iter()
            .map(|row| recorded(row, None))
            .collect::<Result<Vec<_>>>()?;
        self.personal.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_feed(
        &self,
        after: GlobalPosition,
        event_types: &[&str],
        max_scan: usize,
    ) -> Result<dtx::FeedPage> {
        let rows = sqlx::query(&self.sql.read_feed)
            .bind(to_i64(after.commit))
            .bind(to_i64(after.sequence))
            .bind(count(max_scan))
            .bind(event_types)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut page = dtx::FeedPage {
            events: Vec::with_capacity(rows.len()),
            scanned_to: after,
            unreadable: None,
        };
        for row in &rows {
            let stream: Option<String> = row.try_get(0).map_err(Error::storage)?;
            if let Some(stream) = stream {
                match recorded(row, None) {
                    Ok(event) => page.events.push(event),
                    Err(error) => {
                        // Stop before it: what came before is readable, and the reader reports
                        // this row with its position.
                        page.unreadable = Some(dtx::Unreadable {
                            position: GlobalPosition {
                                sequence: to_u64(row.try_get(2).map_err(Error::storage)?),
                                commit: to_u64(row.try_get(3).map_err(Error::storage)?),
                            },
                            stream_id: stream,
                            event_id: row.try_get(4).ok(),
                            error: error.to_string(),
                        });
                        page.scanned_to = page.events.last().map_or(after, |e| e.position);
                        break;
                    }
                }
            } else {
                page.scanned_to = GlobalPosition {
                    sequence: to_u64(row.try_get(2).map_err(Error::storage)?),
                    commit: to_u64(row.try_get(3).map_err(Error::storage)?),
                };
            }
        }
        self.personal.open_events(&mut page.events).await?;
        Ok(page)
    }

    fn feed_waker(&self) -> Option<Arc<dyn dtx::FeedWaker>> {
        let waker = self
            .waker
            .get_or_init(|| Arc::new(wake::PgFeedWaker::start(&self.pool, &self.sql.events)));
        Some(Arc::clone(waker) as Arc<dyn dtx::FeedWaker>)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.last_version(stream).await
    }

    async fn close_stream(&self, stream: &StreamId) -> Result<u64> {
        self.close(stream).await
    }

    async fn archive_stream(&self, stream: &StreamId) -> Result<u64> {
        self.archive(stream).await
    }

    async fn stream_state(&self, stream: &StreamId) -> Result<StreamState> {
        self.state(stream).await
    }

    async fn read_archived_stream_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        self.read_archived_data(stream, from_version, max_count)
            .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row: Option<SnapshotRow> = sqlx::query_as(&self.sql.load_snapshot)
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        let Some(row) = row else { return Ok(None) };
        let mut snapshot = Snapshot {
            aggregate_type: row.aggregate_type,
            version: to_u64(row.version),
            schema_hash: u64::from_ne_bytes(row.schema_hash.to_ne_bytes()),
            state: RawValue::from_string(row.state).map_err(Error::storage)?,
        };
        self.personal.open_snapshot(&mut snapshot).await?;
        Ok(Some(snapshot))
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
        let mut events = events;
        self.personal.seal_events(stream, &mut events).await?;
        if let Some(deferred) = PgDeferredUnitOfWork::staging(uow)
            && let Some(before) = expected.required()
            && !deferred.stages(stream)
        {
            self.guard.ensure(&self.pool).await?;
            self.limits.check(stream, &events)?;
            let staged = StagedAppend {
                store: self.clone(),
                stream: stream.clone(),
                expected,
                batch: Batch::new(events),
            };
            let result = staged.promise(before);
            deferred.stage(Box::new(staged));
            return Ok(result);
        }
        let conn = PgUnitOfWork::of(uow).await?;
        self.guard.ensure_on(conn).await?;
        self.append_on(conn, stream, expected, events).await
    }

    async fn read_stream_data_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        // A deferred unit of work that has staged nothing for this stream reads what is
        // committed, as its transaction would.
        if let Some(deferred) = PgDeferredUnitOfWork::staging(uow)
            && !deferred.stages(stream)
        {
            return self
                .read_data_on(&self.pool, stream, from_version, max_count)
                .await;
        }
        self.read_data_on(
            PgUnitOfWork::of(uow).await?,
            stream,
            from_version,
            max_count,
        )
        .await
    }

    async fn save_snapshot_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<()> {
        self.save_snapshot_on(PgUnitOfWork::of(uow).await?, stream, snapshot)
            .await
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        self.personal.forget(subject).await
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
        // By position: this runs once per event an aggregate loads. The marker row of an
        // archived stream (version 0) has NULLs.
        let rows: Vec<DataRow> = sqlx::query_as(&self.sql.read_stream_data)
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(count(max_count))
            .fetch_all(executor)
            .await
            .map_err(Error::storage)?;
        if rows.last().is_some_and(|row| row.0 == 0) {
            return Err(Error::StreamArchived {
                stream: stream.clone(),
            });
        }
        let mut events = event_data(stream, from_version, rows)?;
        self.personal.open_data(&mut events).await?;
        Ok(events)
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
        snapshot.check_storable(stream)?;
        let mut snapshot = snapshot;
        if !self.personal.seal_snapshot(&mut snapshot).await? {
            tracing::warn!(stream = %stream, version = snapshot.version, "snapshot not stored: a personal value of the state names no data subject (make it with `Personal::of`)");
            return Ok(());
        }
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

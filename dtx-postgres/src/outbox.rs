//! The PostgreSQL outbox ([`PgOutbox`]) and its relay ([`OutboxRelay`]).
//!
//! # Writing
//!
//! [`crate::PgEventStore::with_outbox`] marks the appended event rows for the relay
//! (`event_store.outbox = true`) in the append statement itself: the event row is its own outbox
//! record, so the append with the outbox is still one statement and one round trip, and it
//! writes nothing more than the events. [`PgOutbox::enqueue`] adds other messages, with their
//! own payload and headers, to `outbox_events` inside the caller's transaction.
//!
//! # Reading: the feed, then the backlog table
//!
//! A relay pass has two steps, each one transaction.
//!
//! 1. **The feed.** The relay tries the feed's advisory lock (one relay at a time reads the
//!    feed, the others go on to step 2) and reads the next batch of the gap-free global feed
//!    after the checkpoint (`outbox_feed`): rows in
//!    `(commit_order, global_position)` order below the oldest transaction still running, the
//!    same rule as [`dtx::EventStore::read_all`], so no event is ever passed over because it
//!    committed late. For each outbox event it tries the stream's advisory lock. It publishes
//!    each stream's events in order (different streams concurrently), then, in one statement,
//!    sets aside in `outbox_events` every event it could not publish now, and moves the
//!    checkpoint past the batch; the commit makes both durable together. Set aside are: an event
//!    whose publish failed (with its failure, to be retried with backoff) and the later events of
//!    its stream; the events of a stream that already has rows in `outbox_events` (a dead letter,
//!    a retry, a message); the events of a stream another relay holds.
//! 2. **The backlog table** (`outbox_events`, normally empty), when it has rows: the relay walks
//!    the keys that have rows with a skip scan of its primary key (one index probe per key,
//!    which also yields the key's first row), going on from where its previous pass stopped, so
//!    every key gets its turn; a key is claimable when its first row is pending and due, and the
//!    relay takes the same per-key advisory lock with `pg_try_advisory_xact_lock` (keys another
//!    relay holds are passed over). It reads the first rows of the keys it locked in id order,
//!    an equal share of the batch per key, publishes each key's rows in order, deletes what was
//!    published, records failures (backoff or dead letter) and commits.
//!
//! # Order per stream key, with any number of relays
//!
//! Within a stream the feed's order is version order, and a stream's events are never split
//! between the two paths out of order: an event goes to the backlog table when its stream has
//! rows there, and the table's order within a key is the id order, which for events is their
//! global position. Per-key advisory locks rather than `FOR UPDATE SKIP LOCKED` on rows:
//! skipping a locked row lets another relay take the *next* row of the same key and publish it
//! first. Locking the key keeps the whole key with one relay.
//!
//! The locks live as long as the relay's transaction, so a relay that dies (even by SIGKILL)
//! releases them, and the feed's checkpoint, at once when its connection drops; what it was
//! publishing is still behind the checkpoint or in the table, and is published again by the next
//! relay. Duplicates are thus limited to the batch in flight, and every message carries its id
//! (`dtx-event-id`, `Nats-Msg-Id`) for deduplication. The cost is a transaction held open while
//! a batch is published (milliseconds). The relay's commits do not wait for the WAL flush
//! (`synchronous_commit = off` for its transactions only): a server crash can lose the record
//! that a batch was published, and then the batch is published again.
//!
//! The price of reading the feed: an event is published once every transaction that began
//! before it committed has ended (the feed cannot know what such a transaction will still write).
//! A long-running write transaction anywhere in the database cluster holds publishing back for
//! as long as it runs, as it holds back every reader of the feed; the relay then looks again
//! every few milliseconds ([`RelayPass::waiting`]) and never skips. Keep write transactions
//! short.
//!
//! # Poison messages
//!
//! A message that fails `max_retries + 1` times becomes `dead`. Its key **stops** behind it —
//! later messages of the same key are not published past it, so per-key order is never broken —
//! while every other key keeps flowing. [`PgOutbox::requeue`] puts it back after a fix; the key
//! then resumes in order.
//!
//! # Wake-ups
//!
//! A transaction with a pending `NOTIFY` takes a global lock at commit that serialises every
//! committing transaction, so outbox writes must not notify while a relay is busy anyway. An
//! idle relay **arms** the wake-up by holding an advisory lock (`pg_advisory_lock`, on a
//! connection of its own outside the pool, so a relay dropped while armed leaves no lock behind)
//! and releases it when it is busy again. Every outbox write tries the
//! same lock in shared mode, in its own statement (`pg_try_advisory_xact_lock_shared`): that only
//! fails while a relay holds it, and then the write notifies. No table is read or written for
//! this, and a busy relay means no `NOTIFY` at all.
//!
//! A write that found the relay busy holds the shared lock until it commits, so a relay that
//! goes idle and arms waits for such writes to commit (and writes arriving meanwhile already
//! notify); its last look for work after arming therefore sees them (or finds them waiting for
//! an older transaction, and keeps looking). The wake-up cannot be lost
//! in the instant between a relay's last empty pass and its arming, which a flag read by the
//! writes cannot promise. The poll ([`RelayOptions::poll_interval`]) remains as a fallback for
//! a relay that could not listen.
//!
//! Measured with pgbench (8 clients, one-event appends, PostgreSQL 15 on 2 cores, two runs each):
//! the lock check cost 0–8 % of the throughput, reading a one-row flag table 6–9 %, and a
//! `pg_notify` in every transaction halves it.
//!
//! # Retention
//!
//! Events published from the feed stay where they are, in the event store. Messages published
//! from the backlog table are copied to `outbox_published` (when [`RelayOptions::retention`] is
//! not zero) and deleted from there after the retention, in batches of
//! [`RelayOptions::retention_batch`] rows per statement (see [`PgOutbox::purge_published`]).

use dtx::outbox::{NewOutboxMessage, OutboxCounts, OutboxMessage, Publisher, RelayOptions};
use dtx::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgRow};
use sqlx::{ConnectOptions, Executor, PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The channel relays listen on.
pub const NOTIFY_CHANNEL: &str = "dtx_outbox";

/// The advisory-lock class of outbox keys (`pg_try_advisory_xact_lock(class, hashtext(key))`),
/// so that they never collide with an application's own single-key advisory locks.
const LOCK_CLASS: i32 = 0x6474_786f; // "dtxo"

/// The advisory lock of the relay reading the feed: class `"dtxf"`, id 0.
const FEED_CLASS: i32 = 0x6474_7866; // "dtxf"

/// The advisory lock an armed (idle, listening) relay holds: class `"dtxw"`, id 0.
const WAKE_CLASS: i32 = 0x6474_7877; // "dtxw"

/// The wake-up check of every outbox write, as one SQL expression: a shared try-lock on the wake
/// key fails only while a relay holds it (armed), and then the write notifies. See the module
/// docs (Wake-ups).
///
/// A plain `CASE` rather than a subquery: it costs the server no executor nodes to set up (a
/// subquery with a `pg_notify` in a `FROM` cost about a tenth of a raw INSERT's server CPU on
/// every append, measured by `append_1_outbox_server_cpu`). In a `RETURNING` list it runs once
/// per row: the first row takes the shared lock, the others find their own transaction holding
/// it; and a `NOTIFY` repeated in one transaction is delivered once.
pub(crate) const WAKE_CHECK: &str = "CASE WHEN pg_try_advisory_xact_lock_shared(1685354615, 0) \
     THEN false ELSE pg_notify('dtx_outbox', '') IS NOT NULL END";

/// Takes the wake lock an idle relay holds while it listens, on `conn`: a session lock, released
/// when the connection closes (or with `pg_advisory_unlock_all()`). While it is held every outbox
/// write sends a `NOTIFY`, as if a relay were armed; this is how a relay arms, and how tests and
/// benchmarks of the wake-ups arm one by hand. It waits while writes that found no relay armed
/// are still running (they hold the lock in shared mode until they commit).
///
/// # Errors
/// The database's, as sqlx reports it (a `lock_timeout` set on `conn` ends the wait with one).
pub async fn hold_wake_lock(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1, 0)")
        .bind(WAKE_CLASS)
        .execute(conn)
        .await
        .map(drop)
}

struct OutboxSql {
    feed_lock: String,
    feed_read: String,
    feed_advance: String,
    enqueue: String,
    claim_keys: String,
    claim_rows: String,
    mark_published: String,
    archive_published: String,
    mark_failed: String,
    counts: String,
    dead: String,
    requeue: String,
    requeue_all: String,
    purge: String,
}

/// The columns of a message as [`message`] reads them: an event's row is completed from
/// `event_store` (`e`), a message's row carries its own.
const MESSAGE_COLUMNS: &str = "o.id, o.stream_key, o.sequence, \
     COALESCE(o.event_id, e.event_id) AS event_id, COALESCE(o.event_type, e.event_type) AS event_type, \
     COALESCE(o.payload, e.data)::text AS payload, o.headers::text AS headers, \
     e.correlation_id, e.causation_id, e.traceparent, o.attempts, o.last_error, o.created_at";

impl OutboxSql {
    #[expect(clippy::too_many_lines, reason = "the statements, one after the other")]
    fn new(schema: Option<&str>) -> Self {
        let prefix = schema.map(|s| format!("{s}.")).unwrap_or_default();
        let outbox = format!("{prefix}outbox_events");
        let published = format!("{prefix}outbox_published");
        let events = format!("{prefix}event_store");
        let feed = format!("{prefix}outbox_feed");
        let event_join = format!(
            "LEFT JOIN {events} e ON e.stream_id = o.stream_key AND e.version = o.sequence"
        );
        Self {
            // The feed's lock, taken for this relay's batch (another relay holding it is reading
            // the feed: this one works the backlog table only); whether that table has any row at
            // all; and whether the feed's checkpoint is there. An advisory lock rather than a row lock on the checkpoint: it assigns
            // the relay's transaction no id, so the relay does not hold back the feed's horizon
            // (for every reader) while it publishes.
            feed_lock: format!(
                "SELECT pg_try_advisory_xact_lock({FEED_CLASS}, 0) AS leader,
                        EXISTS (SELECT 1 FROM {outbox}) AS backlog,
                        EXISTS (SELECT 1 FROM {feed} WHERE feed = 'events') AS checkpoint"
            ),
            // The next events of the global feed after the checkpoint, at most $1, in feed order
            // (read after the lock, so the checkpoint is the one the previous batch committed);
            // `ready` when below the oldest running transaction (the rows after the first one
            // that is not only tell that events wait for it). For each ready outbox event: the
            // advisory lock on its stream, and whether the stream has rows in the backlog table
            // (then the event is set aside behind them).
            feed_read: format!(
                "SELECT e.stream_id AS stream_key, e.global_position AS id,
                        e.version AS sequence, e.commit_order, e.outbox,
                        e.commit_order < h.horizon AS ready,
                        e.event_id, e.event_type, CASE WHEN e.outbox THEN e.data::text END AS payload,
                        NULL::text AS headers, e.correlation_id, e.causation_id, e.traceparent,
                        0 AS attempts, NULL::text AS last_error, e.recorded_at AS created_at,
                        CASE WHEN e.outbox AND e.commit_order < h.horizon
                             THEN pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(e.stream_id))
                        END AS locked,
                        CASE WHEN e.outbox AND e.commit_order < h.horizon
                             THEN EXISTS (SELECT 1 FROM {outbox} o WHERE o.stream_key = e.stream_id)
                        END AS parked
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon) h,
                      {feed} f
                 CROSS JOIN LATERAL (
                     SELECT * FROM {events}
                     WHERE (commit_order, global_position) > (f.commit_order, f.global_position)
                     ORDER BY commit_order, global_position LIMIT $1) e
                 WHERE f.feed = 'events'
                 ORDER BY e.commit_order, e.global_position"
            ),
            // Sets events aside in the backlog table (with their failure, if any) and moves the
            // checkpoint on, in one statement.
            feed_advance: format!(
                "WITH parked AS (
                    INSERT INTO {outbox} (stream_key, id, sequence, status, attempts,
                                          next_attempt_at, last_error, created_at)
                    SELECT p.key, p.id, p.sequence, p.status, p.attempts,
                           now() + make_interval(secs => p.delay), p.error, p.created_at
                    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int4[],
                                $6::float8[], $7::text[], $8::timestamptz[])
                         AS p(key, id, sequence, status, attempts, delay, error, created_at)
                    ON CONFLICT DO NOTHING
                    RETURNING 1)
                 UPDATE {feed} SET commit_order = $9, global_position = $10,
                                   published = published + $11, updated_at = now()
                 WHERE feed = 'events'"
            ),
            enqueue: format!(
                "WITH ins AS (
                    INSERT INTO {outbox} (stream_key, id, event_id, event_type, payload, headers)
                    SELECT m.key, nextval('{prefix}event_store_global_position_seq'), m.id, m.type,
                           m.payload::jsonb, m.headers::jsonb
                    FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                         WITH ORDINALITY AS m(key, id, type, payload, headers, ord)
                    ORDER BY m.ord
                    RETURNING id)
                 SELECT count(*) AS added, {WAKE_CHECK} AS woke FROM ins"
            ),
            // A skip scan over the keys after the relay's cursor ($1), up to $3 if given: each
            // step is one probe of the primary key, and yields the head (first row) of the next
            // key's queue. A key is claimable when its head is pending and due; the advisory lock
            // is tried on those only, and only for the heads the LIMIT lets through.
            claim_keys: format!(
                "WITH RECURSIVE heads AS (
                    (SELECT stream_key, status, next_attempt_at FROM {outbox}
                     WHERE stream_key > $1 AND ($3::text IS NULL OR stream_key <= $3)
                     ORDER BY stream_key, id LIMIT 1)
                    UNION ALL
                    SELECT n.stream_key, n.status, n.next_attempt_at FROM heads h
                    CROSS JOIN LATERAL (
                        SELECT stream_key, status, next_attempt_at FROM {outbox}
                        WHERE stream_key > h.stream_key AND ($3::text IS NULL OR stream_key <= $3)
                        ORDER BY stream_key, id LIMIT 1) n
                 )
                 SELECT stream_key,
                        CASE WHEN status = 'pending' AND next_attempt_at <= now()
                             THEN pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(stream_key))
                             ELSE false END AS locked
                 FROM (SELECT * FROM heads LIMIT $2) h"
            ),
            // The first rows of each locked key, in order, at most $2 per key.
            claim_rows: format!(
                "SELECT {MESSAGE_COLUMNS}, o.status, o.next_attempt_at <= now() AS due,
                        o.row_ref::text AS row_ref
                 FROM UNNEST($1::text[]) AS k(key)
                 CROSS JOIN LATERAL (
                     SELECT *, ctid AS row_ref FROM {outbox}
                     WHERE stream_key = k.key ORDER BY id LIMIT $2) o
                 {event_join}
                 ORDER BY o.stream_key, o.id"
            ),
            // By the row addresses the claim read (`row_ref`): the rows cannot move while their
            // keys are locked, and a TID scan needs no index descent at all.
            mark_published: format!("DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[])"),
            archive_published: format!(
                "WITH done AS (
                    DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[])
                    RETURNING stream_key, id, sequence, event_id, event_type, payload, headers,
                              attempts, created_at)
                 INSERT INTO {published} (stream_key, id, sequence, event_id, event_type, payload,
                                          headers, attempts, created_at)
                 SELECT * FROM done"
            ),
            mark_failed: format!(
                "UPDATE {outbox} SET attempts = $3, last_error = $4, status = $5,
                     next_attempt_at = now() + make_interval(secs => $6)
                 WHERE stream_key = $1 AND id = $2"
            ),
            // The status queries read the backlog (what is not yet published) or the archive
            // whole: they are for operators, not for the hot path, which has no index to spare.
            // Pending: the backlog table's pending rows and the outbox events after the feed's
            // checkpoint. Published: the events published from the feed, and the archive.
            counts: format!(
                "WITH f AS (SELECT commit_order, global_position, published FROM {feed}
                            WHERE feed = 'events'),
                      fed AS (SELECT count(*) AS n, min(e.recorded_at) AS oldest
                              FROM {events} e, f
                              WHERE (e.commit_order, e.global_position)
                                    > (f.commit_order, f.global_position)
                                AND e.outbox),
                      o AS (SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                                   count(*) FILTER (WHERE status = 'dead') AS dead,
                                   min(created_at) FILTER (WHERE status = 'pending') AS oldest
                            FROM {outbox})
                 SELECT o.pending + fed.n AS pending, o.dead,
                        extract(epoch FROM now() - LEAST(o.oldest, fed.oldest))::float8 AS lag,
                        (SELECT count(*) FROM {published})
                          + COALESCE((SELECT published FROM f), 0) AS published,
                        EXISTS (SELECT 1 FROM f) AS checkpoint
                 FROM o, fed"
            ),
            dead: format!(
                "SELECT {MESSAGE_COLUMNS} FROM {outbox} o {event_join}
                 WHERE o.status = 'dead' ORDER BY o.id LIMIT $1"
            ),
            requeue: format!(
                "WITH back AS (
                    UPDATE {outbox} SET status = 'pending', attempts = 0, next_attempt_at = now()
                    WHERE id = $1 AND status = 'dead' RETURNING id)
                 SELECT count(*) AS requeued, {WAKE_CHECK} AS woke FROM back"
            ),
            requeue_all: format!(
                "WITH back AS (
                    UPDATE {outbox} SET status = 'pending', attempts = 0, next_attempt_at = now()
                    WHERE status = 'dead' RETURNING id)
                 SELECT count(*) AS requeued, {WAKE_CHECK} AS woke FROM back"
            ),
            purge: format!(
                "DELETE FROM {published} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {published}
                    WHERE published_at < now() - make_interval(secs => $1)
                    LIMIT $2))"
            ),
        }
    }
}

/// The outbox tables on PostgreSQL: adding messages in a transaction, status, dead letters and
/// retention. Create relays with [`PgOutbox::relay`]. Clones share the pool.
#[derive(Clone)]
pub struct PgOutbox {
    pool: PgPool,
    sql: Arc<OutboxSql>,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox").finish_non_exhaustive()
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored message: its row, completed from `event_store` for an event. `Err` inside: the
/// row's event is no longer stored, a failure the relay records like a failed publish.
fn message(row: &PgRow) -> Result<std::result::Result<OutboxMessage, (OutboxMessage, String)>> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
        row: &'r PgRow,
        column: &str,
    ) -> Result<T> {
        row.try_get(column).map_err(Error::storage)
    }
    let key: String = get(row, "stream_key")?;
    let sequence = get::<Option<i64>>(row, "sequence")?.and_then(|s| u64::try_from(s).ok());
    let message_id: Option<uuid::Uuid> = get(row, "event_id")?;
    let message_type: Option<String> = get(row, "event_type")?;
    let payload: Option<String> = get(row, "payload")?;
    let headers = if let Some(headers) = get::<Option<String>>(row, "headers")? {
        // a message: the headers it was enqueued with
        serde_json::from_str(&headers).map_err(Error::storage)?
    } else {
        // an event: the headers of its metadata
        let mut all = BTreeMap::new();
        if let Some(id) = message_id {
            all.insert(dtx::outbox::headers::EVENT_ID.to_owned(), id.to_string());
        }
        if let Some(kind) = &message_type {
            all.insert(dtx::outbox::headers::EVENT_TYPE.to_owned(), kind.clone());
        }
        all.insert(dtx::outbox::headers::STREAM_ID.to_owned(), key.clone());
        for (name, column) in [
            (dtx::outbox::headers::CORRELATION_ID, "correlation_id"),
            (dtx::outbox::headers::CAUSATION_ID, "causation_id"),
        ] {
            if let Some(id) = get::<Option<uuid::Uuid>>(row, column)? {
                all.insert(name.to_owned(), id.to_string());
            }
        }
        if let Some(traceparent) = get::<Option<String>>(row, "traceparent")? {
            all.insert(dtx::outbox::headers::TRACEPARENT.to_owned(), traceparent);
        }
        all
    };
    let missing = payload.is_none();
    let message = OutboxMessage {
        id: get(row, "id")?,
        sequence,
        message_id: message_id.unwrap_or_default(),
        message_type: message_type.unwrap_or_default(),
        payload: payload
            .unwrap_or_else(|| "null".to_owned())
            .into_boxed_str(),
        headers,
        attempts: u32::try_from(get::<i32>(row, "attempts")?).unwrap_or(0),
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
        key,
    };
    if missing {
        let error = format!(
            "event {} of stream `{}` is no longer in the event store",
            sequence.unwrap_or_default(),
            message.key
        );
        return Ok(Err((message, error)));
    }
    Ok(Ok(message))
}

/// The error of a relay or status query that finds the feed's checkpoint row gone.
fn missing_checkpoint() -> Error {
    Error::storage(
        "the outbox feed's checkpoint (row 'events' of outbox_feed) is missing: no event is \
         published from the feed until it is restored (the dtx migrations create it)",
    )
}

/// Reads a count column.
fn count(row: &PgRow, name: &str) -> Result<u64> {
    let n: i64 = row.try_get(name).map_err(Error::storage)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

impl PgOutbox {
    /// The outbox on a migrated database (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(OutboxSql::new(None)),
        }
    }

    /// Uses the tables in `schema` (see [`crate::migrate_in_schema`]).
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        let quoted = crate::quote_identifier(schema)?;
        self.sql = Arc::new(OutboxSql::new(Some(&quoted)));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every statement the outbox and its relays issue, by name, for `EXPLAIN` checks.
    pub fn statements(&self) -> [(&'static str, &str); 14] {
        let sql = &*self.sql;
        [
            ("outbox_feed_lock", &sql.feed_lock),
            ("outbox_feed_read", &sql.feed_read),
            ("outbox_feed_advance", &sql.feed_advance),
            ("outbox_enqueue", &sql.enqueue),
            ("outbox_claim_keys", &sql.claim_keys),
            ("outbox_claim_rows", &sql.claim_rows),
            ("outbox_mark_published", &sql.mark_published),
            ("outbox_archive_published", &sql.archive_published),
            ("outbox_mark_failed", &sql.mark_failed),
            ("outbox_counts", &sql.counts),
            ("outbox_dead", &sql.dead),
            ("outbox_requeue", &sql.requeue),
            ("outbox_requeue_all", &sql.requeue_all),
            ("outbox_purge", &sql.purge),
        ]
    }

    /// Adds messages inside the caller's transaction (or on any connection), in one statement:
    /// they are published only if it commits.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        messages: Vec<NewOutboxMessage>,
    ) -> Result<()> {
        let n = messages.len();
        let (mut keys, mut ids, mut types, mut payloads, mut headers) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for message in messages {
            dtx::StreamId::new(message.key.clone())?;
            headers.push(serde_json::to_string(&message.all_headers()).map_err(Error::storage)?);
            keys.push(message.key);
            ids.push(message.message_id);
            types.push(message.message_type);
            payloads.push(String::from(Box::<str>::from(message.payload)));
        }
        sqlx::query(&self.sql.enqueue)
            .bind(&keys)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .bind(&headers)
            .fetch_one(conn)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    /// Counts by status and the outbox lag (age of the oldest pending message). Pending counts
    /// the outbox events after the feed's checkpoint and the backlog table's pending rows;
    /// published, the events published from the feed and the archived messages. It reads the
    /// feed after the checkpoint, the whole backlog table and the archive: an operator's query,
    /// not one for every request.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let row = sqlx::query(&self.sql.counts)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        if !row
            .try_get::<bool, _>("checkpoint")
            .map_err(Error::storage)?
        {
            return Err(missing_checkpoint());
        }
        let lag: Option<f64> = row.try_get("lag").map_err(Error::storage)?;
        Ok(OutboxCounts {
            pending: count(&row, "pending")?,
            published: count(&row, "published")?,
            dead: count(&row, "dead")?,
            oldest_pending_age: lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Up to `limit` dead-lettered messages, oldest first, with their last error.
    pub async fn dead(&self, limit: usize) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(&self.sql.dead)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?;
        rows.iter()
            .map(|row| Ok(message(row)?.unwrap_or_else(|(message, _)| message)))
            .collect()
    }

    /// Puts a dead message back to pending (attempts reset) and wakes an idle relay; its key
    /// resumes in order. `false` if no dead message has this id.
    pub async fn requeue(&self, id: i64) -> Result<bool> {
        let row = sqlx::query(&self.sql.requeue)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(count(&row, "requeued")? == 1)
    }

    /// Puts every dead message back to pending; returns how many.
    pub async fn requeue_all_dead(&self) -> Result<u64> {
        let row = sqlx::query(&self.sql.requeue_all)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        count(&row, "requeued")
    }

    /// Whether an idle relay is armed, that is listening and holding the wake lock: while it
    /// is, every outbox write notifies.
    pub async fn armed(&self) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid = $1::int8::oid AND objid = 0 AND objsubid = 2)",
        )
        .bind(i64::from(WAKE_CLASS))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::storage)
    }

    /// Deletes published messages older than `older_than`, `batch` rows per statement (each its
    /// own short transaction), until none is left; returns how many.
    pub async fn purge_published(&self, older_than: Duration, batch: usize) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(&self.sql.purge)
                .bind(older_than.as_secs_f64())
                .bind(to_i64(batch.max(1)))
                .execute(&self.pool)
                .await
                .map_err(Error::storage)?;
            total += done.rows_affected();
            if done.rows_affected() < batch.max(1) as u64 {
                return Ok(total);
            }
        }
    }

    /// A relay publishing this outbox through `publisher`.
    pub fn relay(&self, publisher: impl Publisher, options: RelayOptions) -> OutboxRelay {
        OutboxRelay {
            outbox: self.clone(),
            publisher: Arc::new(publisher),
            options,
            cursor: Arc::default(),
        }
    }
}

/// What one [`OutboxRelay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Messages published and marked.
    pub published: usize,
    /// Publish attempts that failed (each rescheduled with backoff or dead-lettered).
    pub failed: usize,
    /// Of those, messages dead-lettered now.
    pub dead: usize,
    /// Events taken from the global feed: published, set aside in the backlog table, or passed
    /// over (events appended without the outbox).
    pub from_feed: usize,
    /// Whether committed events wait in the feed for an older transaction that is still running
    /// (the feed never passes a position such a transaction could still fill).
    pub waiting: bool,
}

impl RelayPass {
    /// Whether the pass did anything.
    pub fn is_idle(&self) -> bool {
        self.published == 0 && self.failed == 0 && self.from_feed == 0
    }

    fn add(&mut self, other: Self) {
        self.published += other.published;
        self.failed += other.failed;
        self.dead += other.dead;
        self.from_feed += other.from_feed;
        self.waiting |= other.waiting;
    }
}

/// Publishes the PostgreSQL outbox: batches claimed under per-key advisory locks, woken by
/// `LISTEN/NOTIFY`, polling only as a fallback; see the [module docs](self) for the
/// guarantees. Run any number of relays, in any number of processes.
#[derive(Clone)]
pub struct OutboxRelay {
    outbox: PgOutbox,
    publisher: Arc<dyn Publisher>,
    options: RelayOptions,
    /// The last key the previous pass looked at: the next one goes on after it, so every key
    /// gets its turn however many keys have work.
    cursor: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The outcome of publishing one key's share of a batch.
struct KeyOutcome {
    published: Vec<i64>,
    failed: Option<(OutboxMessage, String)>,
    /// The key's messages after its failure, not tried.
    unsent: Vec<OutboxMessage>,
}

/// What [`OutboxRelay::publish`] made of a batch.
#[derive(Default)]
struct Published {
    /// The ids of the messages published.
    ids: Vec<i64>,
    /// Each failed key's first failure.
    failed: Vec<(OutboxMessage, String)>,
    /// The messages after a failure, in their keys' order: not tried.
    unsent: Vec<OutboxMessage>,
}

/// The statement that opens a relay's transaction. Its commit does not wait for the WAL flush:
/// what it records is that messages were published, and if a server crash loses that record
/// the messages are published again, which at-least-once delivery allows.
const RELAY_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";

impl OutboxRelay {
    /// The relay's settings.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The outbox it publishes.
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    /// Finds up to `batch` keys with work, after the cursor and then from the start, and
    /// locks them (in `tx`); moves the cursor on.
    async fn claim_keys(&self, tx: &mut PgConnection, batch: usize) -> Result<Vec<String>> {
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut keys = Vec::new();
        let mut next = String::new();
        let scanned = self
            .scan_heads(tx, &cursor, batch, None, &mut keys, &mut next)
            .await?;
        if scanned < batch {
            // The end of the keys: start from the first one again next time, and now take the
            // keys up to the cursor that this pass has room for.
            next.clear();
            if !cursor.is_empty() {
                self.scan_heads(tx, "", batch - scanned, Some(&cursor), &mut keys, &mut next)
                    .await?;
            }
        }
        *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(keys)
    }

    /// Looks at up to `limit` key heads after `after` (up to `upto`), adding the keys it locked
    /// to `keys` and leaving the last key it looked at in `last`; returns how many it looked at.
    async fn scan_heads(
        &self,
        tx: &mut PgConnection,
        after: &str,
        limit: usize,
        upto: Option<&str>,
        keys: &mut Vec<String>,
        last: &mut String,
    ) -> Result<usize> {
        let heads = sqlx::query(&self.outbox.sql.claim_keys)
            .bind(after)
            .bind(to_i64(limit))
            .bind(upto)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::storage)?;
        for head in &heads {
            let key: String = head.try_get("stream_key").map_err(Error::storage)?;
            if head.try_get("locked").map_err(Error::storage)? {
                keys.push(key.clone());
            }
            *last = key;
        }
        Ok(heads.len())
    }

    /// One pass: a batch from the global feed (if no other relay is reading it), then a batch
    /// from the backlog table (if it has rows), each in its own transaction.
    ///
    /// The pass runs as a task of its own, so dropping this future (an aborted relay task, a
    /// timeout) never cuts a transaction short between its statements: with sqlx, a `BEGIN`
    /// cancelled in flight leaves the connection inside a transaction when it goes back to the
    /// pool. The pass finishes, and the future only stops waiting for it.
    pub async fn run_once(&self) -> Result<RelayPass> {
        let relay = self.clone();
        tokio::spawn(async move { relay.pass().await })
            .await
            .map_err(Error::storage)?
    }

    async fn pass(&self) -> Result<RelayPass> {
        let (mut pass, backlog) = self.feed_pass().await?;
        if backlog {
            pass.add(self.table_pass().await?);
        }
        Ok(pass)
    }

    /// Begins a pass's transaction: its commit need not wait for the WAL flush (see
    /// `RELAY_BEGIN`).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.outbox
            .pool
            .begin_with(RELAY_BEGIN)
            .await
            .map_err(Error::storage)
    }

    /// Publishes the next batch of the global feed in one transaction, holding the feed's
    /// advisory lock: each stream's events in order, concurrently across streams. An event
    /// whose publish fails is set aside in the backlog table with its failure (retried from
    /// there with backoff), and so are the stream's later events in the batch; so is an event
    /// whose stream has rows in that table or is held by another relay. Returns whether the
    /// backlog table may have work.
    async fn feed_pass(&self) -> Result<(RelayPass, bool)> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut pass = RelayPass::default();
        let mut tx = self.begin().await?;
        let lock = sqlx::query(&sql.feed_lock)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::storage)?;
        let backlog: bool = lock.try_get("backlog").map_err(Error::storage)?;
        if !lock.try_get::<bool, _>("leader").map_err(Error::storage)? {
            // Another relay is reading the feed.
            tx.commit().await.map_err(Error::storage)?;
            return Ok((pass, backlog));
        }
        if !lock
            .try_get::<bool, _>("checkpoint")
            .map_err(Error::storage)?
        {
            // Starting over from the first event would publish the whole store again: stop.
            return Err(missing_checkpoint());
        }
        let rows = sqlx::query(&sql.feed_read)
            .bind(to_i64(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::storage)?;

        // The outbox events of the batch in feed order, and the keys set aside; a row that
        // cannot become a message is set aside with its error at once.
        let mut events: Vec<OutboxMessage> = Vec::new();
        let mut aside = std::collections::HashSet::new();
        let mut set_aside: Vec<(OutboxMessage, Option<String>)> = Vec::new();
        let mut last = (0, 0);
        for row in &rows {
            if !row.try_get::<bool, _>("ready").map_err(Error::storage)? {
                pass.waiting = true;
                break;
            }
            pass.from_feed += 1;
            last = (
                row.try_get("commit_order").map_err(Error::storage)?,
                row.try_get("id").map_err(Error::storage)?,
            );
            if !row.try_get::<bool, _>("outbox").map_err(Error::storage)? {
                continue;
            }
            let locked: bool = row.try_get("locked").map_err(Error::storage)?;
            let parked: bool = row.try_get("parked").map_err(Error::storage)?;
            match message(row)? {
                Ok(message) => {
                    if !locked || parked {
                        aside.insert(message.key.clone());
                    }
                    events.push(message);
                }
                Err((message, error)) => {
                    aside.insert(message.key.clone());
                    set_aside.push((message, Some(error)));
                }
            }
        }
        if pass.from_feed == 0 {
            tx.commit().await.map_err(Error::storage)?;
            return Ok((pass, backlog));
        }

        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        for message in events {
            if aside.contains(&message.key) {
                set_aside.push((message, None));
            } else if let Some((_, messages)) = per_key.iter_mut().find(|(k, _)| *k == message.key)
            {
                messages.push(message);
            } else {
                per_key.push((message.key.clone(), vec![message]));
            }
        }
        let outcome = self.publish(per_key).await?;
        pass.published = outcome.ids.len();
        // A key that failed is set aside from its failure on.
        set_aside.extend(
            outcome
                .failed
                .into_iter()
                .map(|(m, error)| (m, Some(error))),
        );
        set_aside.extend(outcome.unsent.into_iter().map(|m| (m, None)));
        let parked = !set_aside.is_empty();
        self.advance(&mut tx, set_aside, last, &mut pass).await?;
        tx.commit().await.map_err(Error::storage)?;
        Ok((pass, backlog || parked))
    }

    /// Writes the events set aside to the backlog table (a failed one with its failure: retried
    /// with backoff, or dead) and moves the feed's checkpoint to `last`, in one statement.
    async fn advance(
        &self,
        tx: &mut PgConnection,
        set_aside: Vec<(OutboxMessage, Option<String>)>,
        last: (i64, i64),
        pass: &mut RelayPass,
    ) -> Result<()> {
        let n = set_aside.len();
        let mut keys = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut sequences = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut delays = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        for (message, error) in set_aside {
            let (tries, status, delay) = match &error {
                Some(error) => {
                    let failure = self.failure(&message, error);
                    pass.failed += 1;
                    pass.dead += usize::from(failure.1 == "dead");
                    failure
                }
                None => (0, "pending", Duration::ZERO),
            };
            keys.push(message.key);
            ids.push(message.id);
            sequences.push(message.sequence.and_then(|s| i64::try_from(s).ok()));
            statuses.push(status);
            attempts.push(i32::try_from(tries).unwrap_or(i32::MAX));
            delays.push(delay.as_secs_f64());
            errors.push(error);
            created.push(message.created_at);
        }
        sqlx::query(&self.outbox.sql.feed_advance)
            .bind(&keys)
            .bind(&ids)
            .bind(&sequences)
            .bind(&statuses)
            .bind(&attempts)
            .bind(&delays)
            .bind(&errors)
            .bind(&created)
            .bind(last.0)
            .bind(last.1)
            .bind(to_i64(pass.published))
            .execute(tx)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    /// Publishes each key's messages in order, the keys concurrently; a key stops at its first
    /// failure.
    async fn publish(&self, per_key: Vec<(String, Vec<OutboxMessage>)>) -> Result<Published> {
        let mut running = tokio::task::JoinSet::new();
        for (_, messages) in per_key {
            let publisher = Arc::clone(&self.publisher);
            running.spawn(async move {
                let mut outcome = KeyOutcome {
                    published: Vec::with_capacity(messages.len()),
                    failed: None,
                    unsent: Vec::new(),
                };
                let mut messages = messages.into_iter();
                for message in messages.by_ref() {
                    // Each publish continues the trace of the write that produced the message.
                    match dtx::outbox::publish_traced(&*publisher, &message).await {
                        Ok(()) => outcome.published.push(message.id),
                        Err(error) => {
                            outcome.failed = Some((message, error.to_string()));
                            break;
                        }
                    }
                }
                outcome.unsent.extend(messages);
                outcome
            });
        }
        let mut published = Published::default();
        while let Some(done) = running.join_next().await {
            let outcome = done.map_err(Error::storage)?;
            published.ids.extend(outcome.published);
            published.failed.extend(outcome.failed);
            published.unsent.extend(outcome.unsent);
        }
        Ok(published)
    }

    /// What a failed attempt makes of a message: its attempts, status and retry delay (logged,
    /// and counted when it is dead-lettered).
    fn failure(&self, message: &OutboxMessage, error: &str) -> (u32, &'static str, Duration) {
        let attempts = message.attempts + 1;
        if self.options.is_dead(attempts) {
            tracing::warn!(key = %message.key, id = message.id, attempts, %error, "outbox message dead-lettered; its key stops until it is requeued");
            dtx::telemetry::record_outbox_dead_letter();
            (attempts, "dead", Duration::ZERO)
        } else {
            tracing::debug!(key = %message.key, id = message.id, attempts, %error, "publish failed; retrying later");
            (attempts, "pending", self.options.backoff(attempts))
        }
    }

    /// Claims one batch of the backlog table, publishes it and records the outcome, in one
    /// transaction.
    async fn table_pass(&self) -> Result<RelayPass> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut tx = self.begin().await?;
        let claim = tracing::debug_span!(
            "dtx.outbox.claim",
            keys = tracing::field::Empty,
            messages = tracing::field::Empty,
        );
        let keys = self
            .claim_keys(&mut tx, batch)
            .instrument(claim.clone())
            .await?;
        claim.record("keys", keys.len());
        if keys.is_empty() {
            tx.commit().await.map_err(Error::storage)?;
            return Ok(RelayPass::default());
        }
        // Each key gets an equal share of the batch (a busy key cannot starve the others).
        let share = batch.div_ceil(keys.len());
        let rows = sqlx::query(&sql.claim_rows)
            .bind(&keys)
            .bind(to_i64(share))
            .fetch_all(&mut *tx)
            .instrument(claim.clone())
            .await
            .map_err(Error::storage)?;
        claim.record("messages", rows.len());

        // Each key's rows in order, up to its first dead, not yet due or unreadable row.
        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        let mut blocked = std::collections::HashSet::new();
        let mut failed = Vec::new();
        let mut row_refs = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get("stream_key").map_err(Error::storage)?;
            let id: i64 = row.try_get("id").map_err(Error::storage)?;
            let row_ref: String = row.try_get("row_ref").map_err(Error::storage)?;
            row_refs.insert(id, row_ref);
            if blocked.contains(&key) {
                continue;
            }
            let status: String = row.try_get("status").map_err(Error::storage)?;
            let due: bool = row.try_get("due").map_err(Error::storage)?;
            if status != "pending" || !due {
                blocked.insert(key);
                continue;
            }
            let message = match message(row)? {
                Ok(message) => message,
                Err(unreadable) => {
                    failed.push(unreadable);
                    blocked.insert(key);
                    continue;
                }
            };
            match per_key.last_mut() {
                Some((k, messages)) if *k == key => messages.push(message),
                _ => per_key.push((key, vec![message])),
            }
        }

        // Rows after a key's failure stay as they are, behind it.
        let outcome = self.publish(per_key).await?;
        failed.extend(outcome.failed);
        let published: Vec<String> = outcome
            .ids
            .iter()
            .filter_map(|id| row_refs.remove(id))
            .collect();
        let mut pass = RelayPass {
            published: published.len(),
            ..RelayPass::default()
        };
        if !published.is_empty() {
            let keep = self.options.retention.is_none_or(|r| !r.is_zero());
            sqlx::query(if keep {
                &sql.archive_published
            } else {
                &sql.mark_published
            })
            .bind(&published)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        }
        for (message, error) in failed {
            let (attempts, status, delay) = self.failure(&message, &error);
            pass.dead += usize::from(status == "dead");
            pass.failed += 1;
            sqlx::query(&sql.mark_failed)
                .bind(&message.key)
                .bind(message.id)
                .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                .bind(&error)
                .bind(status)
                .bind(delay.as_secs_f64())
                .execute(&mut *tx)
                .await
                .map_err(Error::storage)?;
        }
        tx.commit().await.map_err(Error::storage)?;
        Ok(pass)
    }

    /// Runs passes until one finds nothing to do (for tests and examples); returns how many
    /// messages it published. Committed events that wait in the feed for an older transaction
    /// still running are waited for.
    pub async fn run_until_idle(&self) -> Result<usize> {
        let mut total = 0;
        let mut wait = WaitForFeed::default();
        loop {
            let pass = self.run_once().await?;
            total += pass.published;
            if pass.is_idle() {
                if !pass.waiting {
                    return Ok(total);
                }
                wait.sleep().await;
            } else {
                wait = WaitForFeed::default();
            }
        }
    }

    /// One pass, with a failure logged (and counted as idle): [`run`](Self::run) keeps going.
    async fn pass_logged(&self) -> RelayPass {
        self.run_once().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "outbox relay pass failed");
            RelayPass::default()
        })
    }

    /// Runs until `shutdown` completes: publishes while there is work (a pass that filled its
    /// batch, or found a single message, is followed at once by the next; one that found
    /// several, after [`RelayOptions::linger`]), then arms the wake-up and waits for a `NOTIFY` (or
    /// [`RelayOptions::poll_interval`] at most). Deletes published rows past
    /// [`RelayOptions::retention`] about once a minute.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut wake = WakeLock::new(&self.outbox.pool);
        let mut listener = PgListener::connect_with(&self.outbox.pool)
            .await
            .map_err(Error::storage)?;
        listener
            .listen(NOTIFY_CHANNEL)
            .await
            .map_err(Error::storage)?;
        let batch = self.options.batch_size.max(1);
        let mut purged: Option<Instant> = None;
        let mut waiting = WaitForFeed::default();
        loop {
            // Busy: passes until one finds nothing. A batch in flight always finishes (it is one
            // transaction), so a graceful stop never leaves published rows unmarked.
            loop {
                let stop = tokio::select! {
                    biased;
                    () = &mut shutdown => true,
                    () = std::future::ready(()) => false,
                };
                if stop {
                    return Ok(());
                }
                let pass = self.pass_logged().await;
                if pass.is_idle() {
                    if !pass.waiting {
                        break;
                    }
                    // Committed events wait for an older transaction: look again shortly.
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = waiting.sleep() => {}
                    }
                    continue;
                }
                waiting = WaitForFeed::default();
                let handled = pass.published + pass.failed;
                if handled > 1 && handled < batch {
                    // Writes keep coming: let the next batch fill a little instead of claiming a
                    // handful at a time. (A lone message is followed by a look at once, so a
                    // quiet outbox publishes each write as soon as it commits.)
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(self.options.linger) => {}
                    }
                }
            }
            if let Some(retention) = self.options.retention
                && !retention.is_zero()
                && purged.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
            {
                purged = Some(Instant::now());
                if let Err(error) = self
                    .outbox
                    .purge_published(retention, self.options.retention_batch)
                    .await
                {
                    tracing::warn!(%error, "outbox retention failed");
                }
            }
            // Idle: arm the wake-up, so that every outbox write from now on notifies, then look
            // once more. Arming waits for the writes that found it unarmed (they hold the wake
            // lock until they commit), so that last look sees all of them: no write is missed.
            let armed = wake.arm().await;
            let pass = self.pass_logged().await;
            if pass.is_idle() && !pass.waiting {
                tokio::select! {
                    () = &mut shutdown => {
                        wake.disarm(armed).await;
                        return Ok(());
                    }
                    woken = listener.recv() => {
                        if let Err(error) = woken {
                            tracing::warn!(%error, "outbox listener failed; polling");
                            tokio::time::sleep(self.options.poll_interval).await;
                        }
                    }
                    () = tokio::time::sleep(self.options.poll_interval) => {}
                }
            }
            // Busy again: writes stop notifying.
            wake.disarm(armed).await;
        }
    }
}

/// The pause before looking again at a feed whose committed events wait for an older
/// transaction: 1 ms, doubling up to 50 ms while it lasts.
struct WaitForFeed(Duration);

impl Default for WaitForFeed {
    fn default() -> Self {
        Self(Duration::from_millis(1))
    }
}

impl WaitForFeed {
    async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
    }
}

/// The connection an idle relay holds the wake lock on: a connection of its own, outside the
/// pool, so that the lock can never stay behind on a pooled connection. A relay dropped while
/// armed (its task aborted) drops this connection, and the server releases the lock with it.
struct WakeLock {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

impl WakeLock {
    fn new(pool: &PgPool) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            conn: None,
        }
    }

    /// Takes the wake lock; `false` if another relay holds it (that relay is armed and its
    /// wake-ups reach every relay) or the connection failed (the relay then polls).
    async fn arm(&mut self) -> bool {
        if self.conn.is_none() {
            match self.options.connect().await {
                Ok(mut conn) => {
                    // Arming waits for the writes that found the relay busy, but not for
                    // another relay that is armed.
                    if let Err(error) = conn.execute("SET lock_timeout = '250ms'").await {
                        tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                        return false;
                    }
                    self.conn = Some(conn);
                }
                Err(error) => {
                    tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                    return false;
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match hold_wake_lock(conn).await {
            Ok(()) => true,
            Err(sqlx::Error::Database(error)) => {
                tracing::debug!(%error, "the outbox wake-up is armed by another relay");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                self.conn = None;
                false
            }
        }
    }

    /// Releases the wake lock if [`arm`](Self::arm) took it.
    async fn disarm(&mut self, armed: bool) {
        let (true, Some(conn)) = (armed, self.conn.as_mut()) else {
            return;
        };
        let released = sqlx::query("SELECT pg_advisory_unlock($1, 0)")
            .bind(WAKE_CLASS)
            .execute(&mut *conn)
            .await;
        if let Err(error) = released {
            // The connection is gone, and the lock with it.
            tracing::debug!(%error, "disarming the outbox wake-up failed");
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wake_check_tries_the_wake_lock_relays_hold() {
        let key = format!("pg_try_advisory_xact_lock_shared({}, 0)", super::WAKE_CLASS);
        assert!(super::WAKE_CHECK.contains(&key), "{}", super::WAKE_CHECK);
    }
}

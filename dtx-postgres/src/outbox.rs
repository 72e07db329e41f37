//! The PostgreSQL outbox ([`PgOutbox`]) and its relay ([`OutboxRelay`]).
//!
//! # Writing
//!
//! [`crate::PgEventStore::with_outbox`] adds one more data-modifying CTE to the append statement,
//! so an append with the outbox is still one statement and one round trip. Every append pays for
//! that row, so it is kept small: an event's `outbox_events` row holds its stream and version
//! only, and the relay reads the event itself (payload, id, type, metadata for the headers) from
//! `event_store` when it publishes. The table has a single index, its primary key
//! `(stream_key, id)`, and holds only the backlog: a relay deletes what it has published (keeping
//! a copy in `outbox_published` for [`RelayOptions::retention`]). [`PgOutbox::enqueue`] adds
//! other messages, with their own payload and headers, inside the caller's transaction.
//!
//! # Order per stream key, with any number of relays
//!
//! A relay works in one transaction per batch:
//!
//! 1. it walks the keys that have rows with a skip scan of the primary key (one index probe per
//!    key, which also yields the key's first row), going on from where its previous pass
//!    stopped, so every key gets its turn; a key is claimable when its first row is pending and
//!    due, and the relay takes a **transaction-scoped advisory lock** on it with
//!    `pg_try_advisory_xact_lock` (keys another relay holds are passed over, so two relays share
//!    the work instead of waiting);
//! 2. it reads the first rows of the keys it locked, in id order, an equal share of the batch per
//!    key, and publishes each key's rows in order (different keys concurrently), stopping a key
//!    at its first failure;
//! 3. it deletes what was published, records failures (backoff or dead letter) and commits,
//!    which releases the locks.
//!
//! Advisory locks rather than `FOR UPDATE SKIP LOCKED` on rows: skipping a locked row lets
//! another relay take the *next* row of the same key and publish it first. Locking the key keeps
//! the whole key with one relay. Because the locks live as long as the relay's transaction, a
//! relay that dies (even by SIGKILL) releases them at once when its connection drops, and its
//! rows are still there: they are published again by the next relay. Duplicates are thus limited
//! to the batch in flight, and every message carries its id (`dtx-event-id`, `Nats-Msg-Id`) for
//! deduplication. The cost is a transaction held open while a batch is published
//! (milliseconds). The relay's commits do not wait for the WAL flush (`synchronous_commit = off`
//! for its transactions only): a server crash can lose the record that a batch was published, and
//! then the batch is published again.
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
//! idle relay **arms** the wake-up by holding an advisory lock (`pg_advisory_lock`, on its
//! listening connection) and releases it when it is busy again. Every outbox write tries the
//! same lock in shared mode, in its own statement (`pg_try_advisory_xact_lock_shared`): that only
//! fails while a relay holds it, and then the write notifies. No table is read or written for
//! this, and a busy relay means no `NOTIFY` at all.
//!
//! A write that found the relay busy holds the shared lock until it commits, so a relay that
//! goes idle and arms waits for such writes to commit (and writes arriving meanwhile already
//! notify); its last look for work after arming therefore sees them. The wake-up cannot be lost
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
//! Published messages are copied to `outbox_published` (when [`RelayOptions::retention`] is not
//! zero) and deleted from there after the retention, in batches of
//! [`RelayOptions::retention_batch`] rows per statement (see [`PgOutbox::purge_published`]).

use dtx::outbox::{NewOutboxMessage, OutboxCounts, OutboxMessage, Publisher, RelayOptions};
use dtx::{Error, Result};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The channel relays listen on.
pub const NOTIFY_CHANNEL: &str = "dtx_outbox";

/// The advisory-lock class of outbox keys (`pg_try_advisory_xact_lock(class, hashtext(key))`),
/// so that they never collide with an application's own single-key advisory locks.
const LOCK_CLASS: i32 = 0x6474_786f; // "dtxo"

/// The advisory lock an armed (idle, listening) relay holds: class `"dtxw"`, id 0.
const WAKE_CLASS: i32 = 0x6474_7877; // "dtxw"

/// The wake-up check of every outbox write, as one SQL expression: a shared try-lock on the wake
/// key fails only while a relay holds it (armed), and then the write notifies. See the module
/// docs (Wake-ups).
pub(crate) const WAKE_CHECK: &str = "(SELECT CASE WHEN pg_try_advisory_xact_lock_shared(1685354615, 0) \
     THEN false ELSE (SELECT true FROM pg_notify('dtx_outbox', '')) END)";

struct OutboxSql {
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
    fn new(schema: Option<&str>) -> Self {
        let prefix = schema.map(|s| format!("{s}.")).unwrap_or_default();
        let outbox = format!("{prefix}outbox_events");
        let published = format!("{prefix}outbox_published");
        let events = format!("{prefix}event_store");
        let event_join = format!(
            "LEFT JOIN {events} e ON e.stream_id = o.stream_key AND e.version = o.sequence"
        );
        Self {
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
            counts: format!(
                "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                        count(*) FILTER (WHERE status = 'dead') AS dead,
                        extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS lag,
                        (SELECT count(*) FROM {published}) AS published
                 FROM {outbox}"
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
    pub fn statements(&self) -> [(&'static str, &str); 11] {
        let sql = &*self.sql;
        [
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

    /// Counts by status and the outbox lag (age of the oldest pending message). It reads the
    /// whole backlog and archive: an operator's query, not one for every request.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let row = sqlx::query(&self.sql.counts)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
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
}

impl RelayPass {
    /// Whether the pass did anything.
    pub fn is_idle(&self) -> bool {
        self.published == 0 && self.failed == 0
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

    /// Claims one batch, publishes it and records the outcome, in one transaction.
    #[expect(
        clippy::too_many_lines,
        reason = "one claim-publish-mark transaction, read top to bottom"
    )]
    pub async fn run_once(&self) -> Result<RelayPass> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut tx = self
            .outbox
            .pool
            .begin_with(RELAY_BEGIN)
            .await
            .map_err(Error::storage)?;
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

        // Keys in parallel, each key's messages one after the other.
        let mut running = tokio::task::JoinSet::new();
        for (_, messages) in per_key {
            let publisher = Arc::clone(&self.publisher);
            running.spawn(async move {
                let mut outcome = KeyOutcome {
                    published: Vec::with_capacity(messages.len()),
                    failed: None,
                };
                for message in messages {
                    // Each publish continues the trace of the write that produced the message.
                    let span = tracing::info_span!(
                        "dtx.outbox.publish",
                        stream = %message.key,
                        message_type = %message.message_type,
                    );
                    dtx::telemetry::set_parent(
                        &span,
                        message
                            .headers
                            .get(dtx::outbox::headers::TRACEPARENT)
                            .map(String::as_str),
                    );
                    match publisher.publish(&message).instrument(span).await {
                        Ok(()) => {
                            let lag = (chrono::Utc::now() - message.created_at).to_std();
                            dtx::telemetry::record_outbox_published(lag.unwrap_or_default());
                            outcome.published.push(message.id);
                        }
                        Err(error) => {
                            outcome.failed = Some((message, error.to_string()));
                            break;
                        }
                    }
                }
                outcome
            });
        }
        let mut pass = RelayPass::default();
        let mut published = Vec::new();
        while let Some(done) = running.join_next().await {
            let outcome = done.map_err(Error::storage)?;
            published.extend(
                outcome
                    .published
                    .iter()
                    .filter_map(|id| row_refs.remove(id)),
            );
            failed.extend(outcome.failed);
        }
        pass.published = published.len();
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
            let attempts = message.attempts + 1;
            let dead = self.options.is_dead(attempts);
            let status = if dead { "dead" } else { "pending" };
            let delay = if dead {
                Duration::ZERO
            } else {
                self.options.backoff(attempts)
            };
            if dead {
                tracing::warn!(key = %message.key, id = message.id, attempts, %error, "outbox message dead-lettered; its key stops until it is requeued");
                pass.dead += 1;
                dtx::telemetry::record_outbox_dead_letter();
            } else {
                tracing::debug!(key = %message.key, id = message.id, attempts, %error, "publish failed; retrying later");
            }
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
    /// messages it published.
    pub async fn run_until_idle(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let pass = self.run_once().await?;
            if pass.is_idle() {
                return Ok(total);
            }
            total += pass.published;
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
        let mut listener = PgListener::connect_with(&self.outbox.pool)
            .await
            .map_err(Error::storage)?;
        listener
            .listen(NOTIFY_CHANNEL)
            .await
            .map_err(Error::storage)?;
        let batch = self.options.batch_size.max(1);
        let mut purged: Option<Instant> = None;
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
                    break;
                }
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
            let armed = arm(&mut listener).await;
            let pass = self.pass_logged().await;
            if pass.is_idle() {
                tokio::select! {
                    () = &mut shutdown => {
                        disarm(&mut listener, armed).await;
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
            disarm(&mut listener, armed).await;
        }
    }
}

/// Takes the wake lock on the listener's connection; `false` if another relay holds it (that
/// relay is armed and its wake-ups reach every relay) or the connection failed.
async fn arm(listener: &mut PgListener) -> bool {
    let timeout = sqlx::query("SET lock_timeout = '250ms'")
        .execute(&mut *listener)
        .await;
    if let Err(error) = timeout {
        tracing::warn!(%error, "arming the outbox wake-up failed; polling");
        return false;
    }
    match sqlx::query("SELECT pg_advisory_lock($1, 0)")
        .bind(WAKE_CLASS)
        .execute(&mut *listener)
        .await
    {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%error, "the outbox wake-up is armed by another relay");
            false
        }
    }
}

/// Releases the wake lock if [`arm`] took it.
async fn disarm(listener: &mut PgListener, armed: bool) {
    if !armed {
        return;
    }
    let released = sqlx::query("SELECT pg_advisory_unlock($1, 0)")
        .bind(WAKE_CLASS)
        .execute(&mut *listener)
        .await;
    if let Err(error) = released {
        // The connection is gone, and the lock with it.
        tracing::debug!(%error, "disarming the outbox wake-up failed");
    }
}

//! The PostgreSQL outbox ([`PgOutbox`]) and its relay ([`OutboxRelay`]).
//!
//! # Writing
//!
//! [`crate::PgEventStore::with_outbox`] adds one more data-modifying CTE to the append statement:
//! the outbox rows come off the inserted event rows, so an append with the outbox is still one
//! statement and one round trip. [`PgOutbox::enqueue`] adds other messages inside the caller's
//! transaction.
//!
//! # Order per stream key, with any number of relays
//!
//! A relay works in one transaction per batch:
//!
//! 1. it picks the keys whose oldest unpublished row is pending and due, oldest first, and takes
//!    a **transaction-scoped advisory lock** per key with `pg_try_advisory_xact_lock` (keys
//!    another relay holds are passed over, so two relays share the work instead of waiting);
//! 2. it reads the unpublished rows of the keys it locked, in id order, and publishes each key's
//!    rows in order (different keys concurrently), stopping a key at its first failure;
//! 3. it marks what was published, records failures (backoff or dead letter) and commits, which
//!    releases the locks.
//!
//! Advisory locks rather than `FOR UPDATE SKIP LOCKED` on rows: skipping a locked row lets
//! another relay take the *next* row of the same key and publish it first. Locking the key keeps
//! the whole key with one relay. Because the locks live as long as the relay's transaction, a
//! relay that dies (even by SIGKILL) releases them at once when its connection drops, and its
//! unmarked rows are still pending: they are published again by the next relay. Duplicates are
//! thus limited to the batch in flight, and every message carries its id (`dtx-event-id`,
//! `Nats-Msg-Id`) for deduplication. The cost is a transaction held open while a batch is
//! published (milliseconds).
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
//! committing transaction, so appends do not `NOTIFY` each time. A relay that runs out of work
//! *arms* a one-row flag (`outbox_wakeup`); a statement-level trigger on `outbox_events` disarms
//! it and notifies, so only the first outbox write after the relays went idle pays for a
//! `NOTIFY`. While the relays are busy (the common case under load) appends only read the
//! unarmed flag. A wake-up lost in the instant between a relay's last empty claim and its arming
//! is covered by the relay's check after arming and, at worst, by the fallback poll
//! ([`RelayOptions::poll_interval`]).
//!
//! Measured with pgbench (8 clients, one-row outbox INSERT, PostgreSQL 15 on 2 cores): no
//! trigger 9,500 tx/s; this trigger with the flag down 7,600–8,500 tx/s; a `pg_notify` in every
//! transaction 3,650–3,900 tx/s.
//!
//! # Retention
//!
//! Published rows older than [`RelayOptions::retention`] are deleted by the relay in batches of
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

struct OutboxSql {
    enqueue: String,
    claim_keys: String,
    claim_rows: String,
    mark_published: String,
    mark_failed: String,
    arm: String,
    counts: String,
    dead: String,
    requeue: String,
    requeue_all: String,
    purge: String,
}

const MESSAGE_COLUMNS: &str = "id, stream_key, sequence, event_id, event_type, payload::text AS payload, \
     headers::text AS headers, attempts, last_error, created_at";

impl OutboxSql {
    fn new(schema: Option<&str>) -> Self {
        let prefix = schema.map(|s| format!("{s}.")).unwrap_or_default();
        let outbox = format!("{prefix}outbox_events");
        let wakeup = format!("{prefix}outbox_wakeup");
        Self {
            enqueue: format!(
                "INSERT INTO {outbox} (stream_key, event_id, event_type, payload, headers)
                 SELECT m.key, m.id, m.type, m.payload::jsonb, m.headers::jsonb
                 FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                      WITH ORDINALITY AS m(key, id, type, payload, headers, ord)
                 ORDER BY m.ord"
            ),
            // Keys whose oldest unpublished row is pending and due, oldest first; the advisory
            // lock is tried only on the rows the outer LIMIT still needs (a volatile filter
            // above a LIMIT subquery is never pushed down into it).
            claim_keys: format!(
                "SELECT k.stream_key FROM (
                    SELECT p.stream_key, min(p.id) AS first FROM {outbox} p
                    WHERE p.status = 'pending' AND p.next_attempt_at <= now()
                    GROUP BY p.stream_key
                    HAVING NOT EXISTS (
                        SELECT 1 FROM {outbox} b
                        WHERE b.stream_key = p.stream_key AND b.status <> 'published'
                          AND b.id < min(p.id))
                    ORDER BY first LIMIT $2
                 ) k
                 WHERE pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(k.stream_key))
                 LIMIT $1"
            ),
            claim_rows: format!(
                "SELECT {MESSAGE_COLUMNS}, status, next_attempt_at <= now() AS due FROM {outbox}
                 WHERE stream_key = ANY($1) AND status <> 'published'
                 ORDER BY id LIMIT $2"
            ),
            mark_published: format!(
                "UPDATE {outbox} SET status = 'published', published_at = now()
                 WHERE id = ANY($1)"
            ),
            mark_failed: format!(
                "UPDATE {outbox} SET attempts = $2, last_error = $3, status = $4,
                     next_attempt_at = now() + make_interval(secs => $5)
                 WHERE id = $1"
            ),
            arm: format!("UPDATE {wakeup} SET armed = true WHERE NOT armed"),
            counts: format!(
                "SELECT (SELECT count(*) FROM {outbox} WHERE status = 'pending') AS pending,
                        (SELECT count(*) FROM {outbox} WHERE status = 'published') AS published,
                        (SELECT count(*) FROM {outbox} WHERE status = 'dead') AS dead,
                        (SELECT extract(epoch FROM now() - created_at)::float8 FROM {outbox}
                         WHERE status = 'pending' ORDER BY id LIMIT 1) AS lag"
            ),
            dead: format!(
                "SELECT {MESSAGE_COLUMNS} FROM {outbox} WHERE status = 'dead' ORDER BY id LIMIT $1"
            ),
            requeue: format!(
                "UPDATE {outbox} SET status = 'pending', attempts = 0, next_attempt_at = now()
                 WHERE id = $1 AND status = 'dead'"
            ),
            requeue_all: format!(
                "UPDATE {outbox} SET status = 'pending', attempts = 0, next_attempt_at = now()
                 WHERE status = 'dead'"
            ),
            purge: format!(
                "DELETE FROM {outbox} WHERE id IN (
                    SELECT id FROM {outbox}
                    WHERE status = 'published' AND published_at < now() - make_interval(secs => $1)
                    ORDER BY published_at LIMIT $2)"
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

fn message(row: &PgRow) -> Result<OutboxMessage> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
        row: &'r PgRow,
        column: &str,
    ) -> Result<T> {
        row.try_get(column).map_err(Error::storage)
    }
    let headers: String = get(row, "headers")?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&headers).map_err(Error::storage)?;
    Ok(OutboxMessage {
        id: get(row, "id")?,
        key: get(row, "stream_key")?,
        sequence: get::<Option<i64>>(row, "sequence")?.and_then(|s| u64::try_from(s).ok()),
        message_id: get(row, "event_id")?,
        message_type: get(row, "event_type")?,
        payload: get::<String>(row, "payload")?.into_boxed_str(),
        headers,
        attempts: u32::try_from(get::<i32>(row, "attempts")?).unwrap_or(0),
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
    })
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
            ("outbox_mark_failed", &sql.mark_failed),
            ("outbox_arm", &sql.arm),
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
            .execute(conn)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    /// Counts by status and the outbox lag (age of the oldest pending message).
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let row = sqlx::query(&self.sql.counts)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        let count = |name: &str| -> Result<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(Error::storage)?).unwrap_or(0))
        };
        let lag: Option<f64> = row.try_get("lag").map_err(Error::storage)?;
        Ok(OutboxCounts {
            pending: count("pending")?,
            published: count("published")?,
            dead: count("dead")?,
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
        rows.iter().map(message).collect()
    }

    /// Puts a dead message back to pending (attempts reset); its key resumes in order. `false`
    /// if no dead message has this id.
    pub async fn requeue(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(&self.sql.requeue)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        self.wake().await;
        Ok(done.rows_affected() == 1)
    }

    /// Puts every dead message back to pending; returns how many.
    pub async fn requeue_all_dead(&self) -> Result<u64> {
        let done = sqlx::query(&self.sql.requeue_all)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        self.wake().await;
        Ok(done.rows_affected())
    }

    async fn wake(&self) {
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&self.pool)
            .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "outbox wake-up not sent; relays find the work by polling");
        }
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

impl OutboxRelay {
    /// The relay's settings.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The outbox it publishes.
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    /// Claims one batch, publishes it and records the outcome, in one transaction.
    #[expect(
        clippy::too_many_lines,
        reason = "one claim-publish-mark transaction, read top to bottom"
    )]
    pub async fn run_once(&self) -> Result<RelayPass> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut tx = self.outbox.pool.begin().await.map_err(Error::storage)?;
        let claim = tracing::debug_span!(
            "dtx.outbox.claim",
            keys = tracing::field::Empty,
            messages = tracing::field::Empty,
        );
        let keys: Vec<String> = sqlx::query_scalar(&sql.claim_keys)
            .bind(to_i64(batch))
            .bind(to_i64(batch.saturating_mul(4)))
            .fetch_all(&mut *tx)
            .instrument(claim.clone())
            .await
            .map_err(Error::storage)?;
        claim.record("keys", keys.len());
        if keys.is_empty() {
            tx.commit().await.map_err(Error::storage)?;
            return Ok(RelayPass::default());
        }
        let rows = sqlx::query(&sql.claim_rows)
            .bind(&keys)
            .bind(to_i64(batch))
            .fetch_all(&mut *tx)
            .instrument(claim.clone())
            .await
            .map_err(Error::storage)?;
        claim.record("messages", rows.len());

        // Each key's rows in order, up to its first dead or not yet due row.
        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        let mut blocked = std::collections::HashSet::new();
        for row in &rows {
            let key: String = row.try_get("stream_key").map_err(Error::storage)?;
            if blocked.contains(&key) {
                continue;
            }
            let status: String = row.try_get("status").map_err(Error::storage)?;
            let due: bool = row.try_get("due").map_err(Error::storage)?;
            if status != "pending" || !due {
                blocked.insert(key);
                continue;
            }
            let message = message(row)?;
            match per_key.iter_mut().find(|(k, _)| *k == key) {
                Some((_, messages)) => messages.push(message),
                None => per_key.push((key, vec![message])),
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
        let mut failed = Vec::new();
        while let Some(done) = running.join_next().await {
            let outcome = done.map_err(Error::storage)?;
            published.extend(outcome.published);
            failed.extend(outcome.failed);
        }
        pass.published = published.len();
        if !published.is_empty() {
            sqlx::query(&sql.mark_published)
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

    /// Runs until `shutdown` completes: publishes while there is work, then arms the wake-up
    /// flag and waits for a `NOTIFY` (or [`RelayOptions::poll_interval`] at most). Deletes
    /// published rows past [`RelayOptions::retention`] about once a minute.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut listener = PgListener::connect_with(&self.outbox.pool)
            .await
            .map_err(Error::storage)?;
        listener
            .listen(NOTIFY_CHANNEL)
            .await
            .map_err(Error::storage)?;
        let mut purged: Option<Instant> = None;
        loop {
            // A batch in flight always finishes (it is one transaction): shutdown is honoured
            // between batches, so a graceful stop never leaves published rows unmarked.
            let stop = tokio::select! {
                biased;
                () = &mut shutdown => true,
                () = std::future::ready(()) => false,
            };
            if stop {
                return Ok(());
            }
            match self.run_once().await {
                Ok(pass) if !pass.is_idle() => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "outbox relay pass failed"),
            }
            if let Some(retention) = self.options.retention
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
            // Idle: arm the wake-up, then look once more for rows that committed before it.
            if let Err(error) = sqlx::query(&self.outbox.sql.arm)
                .execute(&self.outbox.pool)
                .await
            {
                tracing::warn!(%error, "arming the outbox wake-up failed; polling");
            }
            match self.run_once().await {
                Ok(pass) if !pass.is_idle() => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "outbox relay pass failed"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                woken = listener.recv() => {
                    if let Err(error) = woken {
                        tracing::warn!(%error, "outbox listener failed; polling");
                        tokio::time::sleep(self.options.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }
}

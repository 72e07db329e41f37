//! The statements of the outbox and its relays.

use super::relay::RELAY_BEGIN;
use super::wake::{WAKE_CLASS, wake_check};
use super::{FEED_CLASS, LOCK_CLASS, channel, scope};
use crate::sql::Schema;

/// The statements of an outbox and its relays, built once with the outbox's schema.
pub(super) struct OutboxSql {
    /// Opens a feed pass's transaction and tries the feed's lock in the same round trip (see
    /// `feed_begin` in [`OutboxSql::new`]).
    pub(super) feed_begin: String,
    pub(super) feed_read: String,
    pub(super) feed_advance: String,
    /// The feed's checkpoint table, for [`OutboxSql::feed_advance_commit`].
    feed: String,
    pub(super) enqueue: String,
    pub(super) claim_keys: String,
    pub(super) claim_rows: String,
    pub(super) mark_published: String,
    pub(super) archive_published: String,
    pub(super) mark_failed: String,
    pub(super) counts: String,
    pub(super) dead: String,
    pub(super) requeue: String,
    pub(super) requeue_all: String,
    pub(super) purge: String,
    /// Takes the wake lock (session level) an armed relay holds.
    pub(super) hold_wake: String,
    /// Releases it.
    pub(super) release_wake: String,
    /// Whether a relay holds it.
    pub(super) armed: String,
    /// The name of the `NOTIFY` channel of the outbox's wake-ups.
    pub(super) channel: String,
}

/// The transaction-local setting in which `feed_begin` leaves whether it took the feed's lock.
const LEADER_SETTING: &str = "dtx.outbox_feed_leader";

/// The columns of a message as [`MessageRow`](super::message::MessageRow) reads them: an
/// event's row is completed from `event_store` (`e`), a message's row carries its own.
const MESSAGE_COLUMNS: &str = "o.id, o.stream_key, o.sequence, \
     COALESCE(o.event_id, e.event_id) AS event_id, COALESCE(o.event_type, e.event_type) AS event_type, \
     COALESCE(o.payload, e.data)::text AS payload, o.headers::text AS headers, \
     e.correlation_id, e.causation_id, e.traceparent, e.schema_version, o.attempts, o.last_error, o.created_at";

impl OutboxSql {
    /// The statements on the tables of `schema`.
    #[expect(clippy::too_many_lines, reason = "the statements, one after the other")]
    pub(super) fn new(schema: &Schema) -> Self {
        let outbox = schema.table("outbox_events");
        let published = schema.table("outbox_published");
        let events = schema.table("event_store");
        let feed = schema.table("outbox_feed");
        let positions = schema.table("event_store_global_position_seq");
        let scope = scope(&events);
        let wake_check = wake_check(&events);
        let event_join = format!(
            "LEFT JOIN {events} e ON e.stream_id = o.stream_key AND e.version = o.sequence"
        );
        Self {
            // Opens the transaction of a feed pass (its commit need not wait for the WAL flush,
            // see `relay::RELAY_BEGIN`) and tries the feed's lock for this relay's batch, in one
            // round trip: the outcome waits in a setting of the transaction for `feed_read`.
            // Another relay holding the lock is reading the feed: this one works the backlog
            // table only. An advisory lock rather than a row lock on the checkpoint: it assigns
            // the relay's transaction no id, so the relay does not hold back the feed's horizon
            // (for every reader) while it publishes. The lock is taken by a statement of its own,
            // before the one that reads the feed: that one's snapshot, taken after the lock, sees
            // the checkpoint the previous batch committed.
            feed_begin: format!(
                "{RELAY_BEGIN};
                 SELECT set_config('{LEADER_SETTING}',
                                   pg_try_advisory_xact_lock({FEED_CLASS}, {scope})::text, true)"
            ),
            // A row of the feed pass's state, then one per event: whether this relay holds the
            // feed's lock (`feed_begin` tried it), whether the backlog table has any row at all,
            // whether the feed's checkpoint is there, and, if the relay holds the lock, the next
            // events of the global feed after the checkpoint (or after the position $2, $3: the
            // last event of the pass's previous batch), at most $1, in feed order. An event
            // is `ready` when below the oldest running transaction (the rows after the first one
            // that is not only tell that events wait for it). For each ready outbox event: the
            // advisory lock on its stream, and whether the stream has rows in the backlog table
            // (then the event is set aside behind them). Without the lock (or the checkpoint)
            // the feed is not read at all: a single row says so (`present` false), as it does
            // when no event follows the checkpoint. With the backlog table empty (in this
            // statement's snapshot, which every probe shares) no stream has rows there: the
            // per-event probe is skipped.
            feed_read: format!(
                "SELECT l.leader, l.backlog, l.checkpoint, r.id IS NOT NULL AS present,
                        COALESCE(r.stream_key, '') AS stream_key, COALESCE(r.id, 0) AS id,
                        r.sequence, COALESCE(r.commit_order, 0) AS commit_order,
                        COALESCE(r.outbox, false) AS outbox, COALESCE(r.ready, false) AS ready,
                        r.event_id, r.event_type, r.payload, NULL::text AS headers,
                        r.correlation_id, r.causation_id, r.traceparent, r.schema_version,
                        0 AS attempts, NULL::text AS last_error,
                        COALESCE(r.created_at, now()) AS created_at, r.locked, r.parked
                 FROM (SELECT COALESCE(NULLIF(current_setting('{LEADER_SETTING}', true), '')::bool,
                                       false) AS leader,
                              EXISTS (SELECT 1 FROM {outbox}) AS backlog,
                              EXISTS (SELECT 1 FROM {feed} WHERE feed = 'events') AS checkpoint) l
                 LEFT JOIN LATERAL (
                     SELECT e.stream_id AS stream_key, e.global_position AS id,
                            e.version AS sequence, e.commit_order, e.outbox,
                            e.commit_order < h.horizon AS ready,
                            e.event_id, e.event_type,
                            CASE WHEN e.outbox THEN e.data::text END AS payload,
                            e.correlation_id, e.causation_id, e.traceparent, e.schema_version,
                            e.recorded_at AS created_at,
                            CASE WHEN e.outbox AND e.commit_order < h.horizon
                                 THEN pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(e.stream_id) # {scope})
                            END AS locked,
                            CASE WHEN e.outbox AND e.commit_order < h.horizon
                                 THEN CASE WHEN l.backlog
                                           THEN EXISTS (SELECT 1 FROM {outbox} o
                                                        WHERE o.stream_key = e.stream_id)
                                           ELSE false END
                            END AS parked
                     FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon) h,
                          {feed} f
                     CROSS JOIN LATERAL (
                         SELECT * FROM {events}
                         WHERE (commit_order, global_position)
                               > (COALESCE($2::int8, f.commit_order),
                                  COALESCE($3::int8, f.global_position))
                         ORDER BY commit_order, global_position LIMIT $1) e
                     WHERE l.leader AND f.feed = 'events'
                 ) r ON true
                 ORDER BY r.commit_order, r.id"
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
                 {}",
                move_checkpoint(&feed, "$9", "$10", "$11")
            ),
            feed: feed.clone(),
            enqueue: format!(
                "WITH ins AS (
                    INSERT INTO {outbox} (stream_key, id, event_id, event_type, payload, headers)
                    SELECT m.key, nextval('{positions}'), m.id, m.type,
                           m.payload::jsonb, m.headers::jsonb
                    FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                         WITH ORDINALITY AS m(key, id, type, payload, headers, ord)
                    ORDER BY m.ord
                    RETURNING id)
                 SELECT count(*) AS added, {wake_check} AS woke FROM ins"
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
                             THEN pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(stream_key) # {scope})
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
                 SELECT count(*) AS requeued, {wake_check} AS woke FROM back"
            ),
            requeue_all: format!(
                "WITH back AS (
                    UPDATE {outbox} SET status = 'pending', attempts = 0, next_attempt_at = now()
                    WHERE status = 'dead' RETURNING id)
                 SELECT count(*) AS requeued, {wake_check} AS woke FROM back"
            ),
            purge: format!(
                "DELETE FROM {published} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {published}
                    WHERE published_at < now() - make_interval(secs => $1)
                    LIMIT $2))"
            ),
            hold_wake: format!("SELECT pg_advisory_lock({WAKE_CLASS}, {scope})"),
            release_wake: format!("SELECT pg_advisory_unlock({WAKE_CLASS}, {scope})"),
            armed: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks
                     WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
                       AND database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
                       AND classid = {WAKE_CLASS}::int8::oid
                       AND objid = '{events}'::regclass::oid AND objsubid = 2)"
            ),
            channel: format!("SELECT {}", channel(&events)),
        }
    }

    /// Moves the feed's checkpoint to `last`, adds `published` to its count and commits, in one
    /// simple query: the end of a feed pass that set nothing aside (`feed_advance` does the
    /// same and sets events aside). Its values are integers, written into the text.
    pub(super) fn feed_advance_commit(&self, last: (i64, i64), published: i64) -> String {
        let (commit_order, global_position) = last;
        let update = move_checkpoint(
            &self.feed,
            &commit_order.to_string(),
            &global_position.to_string(),
            &published.to_string(),
        );
        format!("{update}; COMMIT")
    }

    /// Every statement, by name, for `EXPLAIN` checks.
    pub(super) fn named(&self) -> [(&'static str, &str); 13] {
        [
            ("outbox_feed_read", &self.feed_read),
            ("outbox_feed_advance", &self.feed_advance),
            ("outbox_enqueue", &self.enqueue),
            ("outbox_claim_keys", &self.claim_keys),
            ("outbox_claim_rows", &self.claim_rows),
            ("outbox_mark_published", &self.mark_published),
            ("outbox_archive_published", &self.archive_published),
            ("outbox_mark_failed", &self.mark_failed),
            ("outbox_counts", &self.counts),
            ("outbox_dead", &self.dead),
            ("outbox_requeue", &self.requeue),
            ("outbox_requeue_all", &self.requeue_all),
            ("outbox_purge", &self.purge),
        ]
    }
}

/// The statement that moves the feed's checkpoint (table `feed`) to the position
/// (`commit_order`, `global_position`) and adds `published` to its count: SQL expressions,
/// parameters or integers.
fn move_checkpoint(
    feed: &str,
    commit_order: &str,
    global_position: &str,
    published: &str,
) -> String {
    format!(
        "UPDATE {feed} SET commit_order = {commit_order}, global_position = {global_position},
                          published = published + {published}, updated_at = now()
         WHERE feed = 'events'"
    )
}

//! Closing and archiving streams ([`dtx::EventStore::close_stream`],
//! [`dtx::EventStore::archive_stream`]): the `closed_streams` and `event_archive` tables (see
//! their migrations).
//!
//! - **Refusing appends.** Every append statement carries [`open_check`] in its filter: a
//!   one-time filter that probes the primary key of `closed_streams` for the stream (one index
//!   probe per statement, on a table with a row per closed stream and none per event). An append
//!   to a closed stream inserts nothing, and the store reports [`Error::StreamClosed`] after
//!   looking the stream up, on that failure path only.
//! - **Closing** inserts the stream's row and commits; from then on every append statement that
//!   starts sees it. An append whose statement started before the commit may still insert: it
//!   locked `closed_streams` (every append statement does, `AccessShareLock`) before it took its
//!   snapshot, and holds the lock until its transaction ends. So the close then waits until
//!   every transaction that held a lock on the table at its commit has ended (the wait of
//!   `CREATE INDEX CONCURRENTLY`, read from `pg_locks`), and only then records the last version.
//!   Appends are never blocked by it.
//! - **Archiving** moves the events to `event_archive` in one transaction (`DELETE .. RETURNING`
//!   into `INSERT`). The feed reads both tables in one statement with one snapshot (see
//!   [`feed_window`]), so an archived event is yielded exactly once, at its position, to a reader
//!   before it; stream reads see a marker row of an archived stream and refuse
//!   ([`Error::StreamArchived`]).

use super::PgEventStore;
use crate::sql::{Schema, to_i64, to_u64};
use dtx::{Error, EventData, Result, StreamId, StreamState};
use std::time::Duration;

/// The lifecycle statements, built once per schema.
pub(super) struct LifecycleSql {
    close: String,
    lockers: String,
    running: String,
    settle: String,
    state: String,
    version: String,
    lock_closed: String,
    outbox_behind: String,
    archive: String,
    mark_archived: String,
    pub(super) read_archived_data: String,
}

/// The table of closed streams beside the event table `events` (`event_store`, schema-qualified
/// or not).
fn sibling(events: &str, table: &str) -> String {
    match events.strip_suffix("event_store") {
        Some(schema) => format!("{schema}{table}"),
        None => table.to_owned(),
    }
}

/// The table of closed streams beside the event table `events`.
pub(super) fn closed_streams(events: &str) -> String {
    sibling(events, "closed_streams")
}

/// The condition every append statement into `events` adds to its filter: the stream (`$1`) is
/// not closed. Uncorrelated, so it runs once per statement (a one-time filter over one probe of
/// the primary key of `closed_streams`).
pub(super) fn open_check(events: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM {} WHERE stream_id = $1)",
        sibling(events, "closed_streams")
    )
}

/// `filter` (`WHERE ...`) with [`open_check`] added.
pub(super) fn refuse_closed(filter: &str, events: &str) -> String {
    let condition = filter.strip_prefix("WHERE ").unwrap_or(filter);
    format!("WHERE ({condition}) AND {}", open_check(events))
}

/// The columns of an event row as stored, in both tables.
const STORED: &str = "stream_id, version, global_position, commit_order, event_id, event_type, \
     schema_version, data, correlation_id, causation_id, traceparent, recorded_at";

/// The window of the global feed after `($1, $2)` below the horizon, at most `$3` rows in feed
/// order, from the hot table and the archive in one statement: each part is one range scan of
/// its feed index, and one snapshot sees an event being archived in exactly one of them.
pub(super) fn feed_window(events: &str) -> String {
    let archive = sibling(events, "event_archive");
    let part = |table: &str| {
        format!(
            "(SELECT {STORED} FROM {table}
              WHERE (commit_order, global_position) > ($1, $2)
                AND commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
              ORDER BY commit_order, global_position LIMIT $3)"
        )
    };
    format!(
        "SELECT {STORED} FROM ({} UNION ALL {}) both_tables
         ORDER BY commit_order, global_position LIMIT $3",
        part(events),
        part(&archive)
    )
}

/// A row that stream reads (`read_stream`, `read_stream_data`) return after the events when the
/// stream (`$1`) is archived: version 0, which no event has. `columns` are the other columns of
/// the read, as NULLs of their types.
pub(super) fn archived_marker(events: &str, columns: &str) -> String {
    format!(
        "SELECT {columns} FROM {} WHERE stream_id = $1 AND archived_at IS NOT NULL",
        sibling(events, "closed_streams")
    )
}

impl LifecycleSql {
    pub(super) fn new(schema: &Schema) -> Self {
        let events = schema.table("event_store");
        let closed = schema.table("closed_streams");
        let archive = schema.table("event_archive");
        let outbox = schema.table("outbox_events");
        let feed = schema.table("outbox_feed");
        let last = format!(
            "GREATEST((SELECT COALESCE(max(version), 0) FROM {events} WHERE stream_id = $1),
                      (SELECT COALESCE(max(version), 0) FROM {archive} WHERE stream_id = $1))"
        );
        Self {
            close: format!(
                "INSERT INTO {closed} (stream_id) VALUES ($1) ON CONFLICT (stream_id) DO NOTHING"
            ),
            // The transactions holding a lock on the table (every append statement takes one
            // before its snapshot and keeps it to the end of its transaction), prepared ones too.
            lockers: format!(
                "SELECT COALESCE(array_agg(DISTINCT virtualtransaction), '{{}}') FROM pg_locks
                 WHERE locktype = 'relation' AND relation = '{closed}'::regclass
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND pid IS DISTINCT FROM pg_backend_pid()"
            ),
            // A running transaction holds the lock on its own virtual transaction id.
            running: "SELECT count(*) FROM pg_locks WHERE virtualtransaction = ANY($1::text[])"
                .to_owned(),
            settle: format!(
                "UPDATE {closed} SET last_version = {last} WHERE stream_id = $1
                 RETURNING last_version"
            ),
            state: format!(
                "SELECT last_version, archived_at IS NOT NULL AS archived FROM {closed}
                 WHERE stream_id = $1"
            ),
            version: format!("SELECT {last}"),
            lock_closed: format!(
                "SELECT last_version, archived_at IS NOT NULL AS archived FROM {closed}
                 WHERE stream_id = $1 FOR UPDATE"
            ),
            // Whether the outbox relay still needs the stream's events in the hot table: rows of
            // the stream in its backlog table (they are completed from event_store), or outbox
            // events after its checkpoint in the feed.
            outbox_behind: format!(
                "SELECT EXISTS (SELECT 1 FROM {outbox} WHERE stream_key = $1)
                     OR EXISTS (SELECT 1 FROM {events} e, {feed} f
                                WHERE f.feed = 'events' AND e.stream_id = $1 AND e.outbox
                                  AND (e.commit_order, e.global_position)
                                      > (f.commit_order, f.global_position))"
            ),
            archive: format!(
                "WITH moved AS (DELETE FROM {events} WHERE stream_id = $1 RETURNING *)
                 INSERT INTO {archive} ({STORED}, outbox)
                 SELECT {STORED}, outbox FROM moved"
            ),
            mark_archived: format!("UPDATE {closed} SET archived_at = now() WHERE stream_id = $1"),
            read_archived_data: format!(
                "SELECT version, event_type, schema_version, data::text AS data FROM (
                     SELECT version, event_type, schema_version, data FROM {archive}
                     WHERE stream_id = $1 AND version >= $2
                     UNION ALL
                     SELECT version, event_type, schema_version, data FROM {events}
                     WHERE stream_id = $1 AND version >= $2) both_tables
                 ORDER BY version LIMIT $3"
            ),
        }
    }

    /// Every statement, by name, for `EXPLAIN` checks.
    pub(super) fn named(&self) -> [(&'static str, &str); 10] {
        [
            ("close_stream", &self.close),
            ("close_lockers", &self.lockers),
            ("close_running", &self.running),
            ("close_settle", &self.settle),
            ("stream_state", &self.state),
            ("stream_last_version", &self.version),
            ("archive_lock", &self.lock_closed),
            ("archive_outbox_behind", &self.outbox_behind),
            ("archive_move", &self.archive),
            ("archive_mark", &self.mark_archived),
        ]
    }
}

/// How long the close waits between two looks at the transactions it waits for, at most.
const MAX_PAUSE: Duration = Duration::from_millis(200);

impl PgEventStore {
    /// [`dtx::EventStore::close_stream`]: see the module's documentation.
    pub(super) async fn close(&self, stream: &StreamId) -> Result<u64> {
        let sql = &self.lifecycle;
        sqlx::query(&sql.close)
            .bind(stream.as_str())
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        let waiting: Vec<String> = sqlx::query_scalar(&sql.lockers)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        let mut pause = Duration::from_millis(2);
        while !waiting.is_empty() {
            let running: i64 = sqlx::query_scalar(&sql.running)
                .bind(&waiting)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::storage)?;
            if running == 0 {
                break;
            }
            tracing::debug!(stream = %stream, running, "close waits for appends that began before it");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        let version: i64 = sqlx::query_scalar(&sql.settle)
            .bind(stream.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        tracing::debug!(stream = %stream, version, "stream closed");
        Ok(to_u64(version))
    }

    /// [`dtx::EventStore::archive_stream`]: one transaction that locks the stream's row in
    /// `closed_streams`, checks that the outbox relay is done with its events, and moves them.
    pub(super) async fn archive(&self, stream: &StreamId) -> Result<u64> {
        let sql = &self.lifecycle;
        let refuse = |reason: &str| Error::Archive {
            stream: stream.clone(),
            reason: reason.to_owned(),
        };
        let mut tx = self.pool.begin().await.map_err(Error::storage)?;
        let row: Option<(Option<i64>, bool)> = sqlx::query_as(&sql.lock_closed)
            .bind(stream.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::storage)?;
        match row {
            None => return Err(refuse("it is not closed; close it first")),
            Some((None, _)) => {
                return Err(refuse(
                    "its close has not completed (the closing process stopped while waiting for \
                     appends that began before it); close it again",
                ));
            }
            Some((Some(_), true)) => return Ok(0),
            Some((Some(_), false)) => {}
        }
        let behind: bool = sqlx::query_scalar(&sql.outbox_behind)
            .bind(stream.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::storage)?;
        if behind {
            return Err(refuse(
                "the outbox relay has not published all of its events yet (or holds some as \
                 retries or dead letters); archive it once they are published",
            ));
        }
        let moved = sqlx::query(&sql.archive)
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?
            .rows_affected();
        sqlx::query(&sql.mark_archived)
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        tx.commit().await.map_err(Error::storage)?;
        tracing::debug!(stream = %stream, events = moved, "stream archived");
        Ok(moved)
    }

    /// [`dtx::EventStore::stream_state`].
    pub(super) async fn state(&self, stream: &StreamId) -> Result<StreamState> {
        let row: Option<(Option<i64>, bool)> = sqlx::query_as(&self.lifecycle.state)
            .bind(stream.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        let Some((version, archived)) = row else {
            return Ok(StreamState::Open);
        };
        let version = match version {
            Some(version) => to_u64(version),
            None => self.last_version(stream).await?,
        };
        Ok(if archived {
            StreamState::Archived { version }
        } else {
            StreamState::Closed { version }
        })
    }

    /// The stream's last version, archived or not.
    pub(super) async fn last_version(&self, stream: &StreamId) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(&self.lifecycle.version)
            .bind(stream.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(to_u64(version))
    }

    /// An append to `stream` that inserted nothing ended in `error` (a conflict): on a closed
    /// stream it is [`Error::StreamClosed`] instead. Read on `conn` (a unit of work's
    /// transaction, which a plain read does not abort).
    pub(super) async fn refused<'c, E>(&self, executor: E, stream: &StreamId, error: Error) -> Error
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        if !matches!(error, Error::Conflict { .. }) {
            return error;
        }
        let closed: std::result::Result<Option<(Option<i64>, bool)>, _> =
            sqlx::query_as(&self.lifecycle.state)
                .bind(stream.as_str())
                .fetch_optional(executor)
                .await;
        match closed {
            Ok(Some(_)) => Error::StreamClosed {
                stream: stream.clone(),
            },
            Ok(None) => error,
            Err(source) => Error::storage(source),
        }
    }

    /// [`dtx::EventStore::read_archived_stream_data`].
    pub(super) async fn read_archived_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        let rows: Vec<(i64, String, i32, String)> =
            sqlx::query_as(&self.lifecycle.read_archived_data)
                .bind(stream.as_str())
                .bind(to_i64(from_version))
                .bind(crate::sql::count(max_count))
                .fetch_all(&self.pool)
                .await
                .map_err(Error::storage)?;
        let mut events = super::event_data(stream, from_version, rows)?;
        self.personal.open_data(&mut events).await?;
        Ok(events)
    }
}

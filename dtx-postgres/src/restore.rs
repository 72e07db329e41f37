//! Safety after a logical restore: the check that refuses to run on a feed whose stored order is
//! ahead of the database's transaction ids, and the repair that re-bases it.
//!
//! The global feed orders events by `commit_order`, the id of the transaction that appended them
//! (`pg_current_xact_id()`, a 64-bit `xid8` that counts epochs and never wraps), and readers only
//! read below the oldest running transaction (`pg_snapshot_xmin`). Transaction ids belong to the
//! cluster, not to the data: `pg_dump` and `pg_restore` (or any logical copy) into another
//! cluster keep the stored `commit_order` values while the new cluster's ids start low. Events
//! appended there would sort below the checkpoints of the outbox relay and the projections, and
//! be skipped, silently; the restored events above the new cluster's ids would not be read at
//! all until its ids caught up. Physical copies (streaming replicas, `pg_basebackup`, PITR) and
//! `pg_upgrade` keep the transaction ids and need nothing.
//!
//! A healthy database never stores a `commit_order` at or above its next transaction id (every
//! stored value is the id of a transaction that wrote). [`check_feed`] tests exactly that;
//! [`crate::PgEventStore`] (before its first append), [`crate::OutboxRelay`] (before its first
//! pass) and [`crate::PgCheckpointStore`] (before a projection runner first takes a
//! checkpoint) run it once and refuse with [`dtx::Error::FeedAhead`] until
//! [`repair_restored_feed`] has run.

use crate::sql::{Schema, to_u64};
use dtx::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use std::sync::Arc;

/// The check's statement for the tables of `schema`: the highest stored commit order (events,
/// the relay's checkpoint, the projections' checkpoints) and the next transaction id.
fn check_sql(schema: &Schema) -> String {
    format!(
        "SELECT GREATEST((SELECT max(commit_order) FROM {events}),
                         (SELECT max(commit_order) FROM {archive}),
                         (SELECT max(commit_order) FROM {feed}),
                         (SELECT max(commit_order) FROM {checkpoints})) AS stored,
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid",
        events = schema.table("event_store"),
        archive = schema.table("event_archive"),
        feed = schema.table("outbox_feed"),
        checkpoints = schema.table("projection_checkpoints"),
    )
}

/// The highest stored commit order (0 for an empty feed) and the next transaction id.
async fn positions(conn: &mut PgConnection, sql: &str) -> Result<(u64, u64)> {
    let (stored, next_xid): (Option<i64>, i64) = sqlx::query_as(sql)
        .fetch_one(conn)
        .await
        .map_err(Error::storage)?;
    Ok((to_u64(stored.unwrap_or(0)), to_u64(next_xid)))
}

/// `Ok` unless the feed's stored order is at or above the database's next transaction id
/// ([`Error::FeedAhead`]: the database was restored from a logical dump into another cluster;
/// see [`repair_restored_feed`]). One statement: three index lookups.
///
/// # Errors
///
/// [`Error::FeedAhead`], or the database's failure.
pub async fn check_feed(pool: &PgPool) -> Result<()> {
    check_on(pool, &check_sql(&Schema::default())).await
}

/// [`check_feed`] for the tables in `schema` (see [`crate::migrate_in_schema`]).
///
/// # Errors
///
/// As [`check_feed`], and [`Error::Invalid`] for a schema name that is not valid.
pub async fn check_feed_in_schema(pool: &PgPool, schema: &str) -> Result<()> {
    check_on(pool, &check_sql(&Schema::named(schema)?)).await
}

async fn check_on(pool: &PgPool, sql: &str) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(Error::storage)?;
    check_with(&mut conn, sql).await
}

async fn check_with(conn: &mut PgConnection, sql: &str) -> Result<()> {
    let (stored, next_xid) = positions(conn, sql).await?;
    if stored >= next_xid {
        return Err(Error::FeedAhead { stored, next_xid });
    }
    Ok(())
}

/// The once-per-instance start-up check of a store or relay (shared by its clones): passes are
/// remembered, a refusal is checked again on the next call.
#[derive(Debug, Clone)]
pub(crate) struct FeedGuard {
    passed: Arc<tokio::sync::OnceCell<()>>,
    sql: Arc<str>,
}

impl FeedGuard {
    /// The guard of the tables in `schema`.
    pub(crate) fn new(schema: &Schema) -> Self {
        Self {
            passed: Arc::default(),
            sql: check_sql(schema).into(),
        }
    }

    /// [`check_feed`], once it passed never again.
    pub(crate) async fn ensure(&self, pool: &PgPool) -> Result<()> {
        if self.passed.initialized() {
            return Ok(());
        }
        self.passed
            .get_or_try_init(|| check_on(pool, &self.sql))
            .await?;
        Ok(())
    }

    /// [`FeedGuard::ensure`] on a connection already held (a unit of work's transaction: the
    /// pool may have no other connection to give).
    pub(crate) async fn ensure_on(&self, conn: &mut PgConnection) -> Result<()> {
        if self.passed.initialized() {
            return Ok(());
        }
        self.passed
            .get_or_try_init(|| check_with(conn, &self.sql))
            .await?;
        Ok(())
    }
}

/// What [`repair_restored_feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRepair {
    /// The highest commit order stored before the repair.
    pub stored: u64,
    /// The database's next transaction id when the repair ran.
    pub next_xid: u64,
    /// Whether anything was re-based (`false`: the feed was not ahead, nothing changed).
    pub repaired: bool,
    /// Events re-based.
    pub events: u64,
    /// Checkpoints moved: the relay's and the projections'.
    pub checkpoints: u64,
}

/// Repairs a feed restored from a logical dump into another cluster, in one transaction: every
/// stored `commit_order` (events, archived ones included, the outbox relay's checkpoint, the projections' checkpoints,
/// the positions of failed and skipped events) is re-based below the current transaction id,
/// so that every event is readable again and every event appended afterwards sorts after them.
/// What each reader has read stays read, and what it has not stays ahead of it: the checkpoints
/// cut the feed into segments, the events of segment `n` get the order `n + 1`, and each
/// checkpoint moves to the end of its segment. Per-stream order is kept (within a segment the
/// feed follows `global_position`, which is version order within a stream). The projections'
/// leases, taken by runners of the old cluster, are released.
///
/// Run it once, with the services stopped, after a logical restore (their start-up refuses
/// with [`Error::FeedAhead`] until then); it locks the feed's tables while it runs and rewrites
/// every event row (`VACUUM event_store` afterwards). On a feed that is not ahead it changes
/// nothing and returns `repaired: false`, so running it twice is harmless. Positions kept
/// outside dtx's tables (a subscriber's own checkpoint) are not moved: reset those.
///
/// # Errors
///
/// The database's failure (nothing is changed then).
pub async fn repair_restored_feed(pool: &PgPool) -> Result<FeedRepair> {
    repair(pool, &Schema::default()).await
}

/// [`repair_restored_feed`] for the tables in `schema` (see [`crate::migrate_in_schema`]).
///
/// # Errors
///
/// As [`repair_restored_feed`], and [`Error::Invalid`] for a schema name that is not valid.
pub async fn repair_restored_feed_in_schema(pool: &PgPool, schema: &str) -> Result<FeedRepair> {
    repair(pool, &Schema::named(schema)?).await
}

async fn repair(pool: &PgPool, schema: &Schema) -> Result<FeedRepair> {
    let events = schema.table("event_store");
    let archive = schema.table("event_archive");
    let feed = schema.table("outbox_feed");
    let checkpoints = schema.table("projection_checkpoints");
    let skips = schema.table("projection_skips");
    let mut tx = pool.begin().await.map_err(Error::storage)?;
    // Writers wait; plain reads go on.
    sqlx::query(&format!(
        "LOCK TABLE {events}, {archive}, {feed}, {checkpoints}, {skips} IN EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await
    .map_err(Error::storage)?;
    let (stored, next_xid) = positions(&mut tx, &check_sql(schema)).await?;
    let mut report = FeedRepair {
        stored,
        next_xid,
        repaired: false,
        events: 0,
        checkpoints: 0,
    };
    if stored < next_xid {
        tx.rollback().await.map_err(Error::storage)?;
        return Ok(report);
    }
    // The distinct checkpoints past the start of the feed: the segment boundaries.
    exec(
        &mut tx,
        &format!(
            "CREATE TEMP TABLE dtx_feed_bounds ON COMMIT DROP AS
         SELECT DISTINCT commit_order AS c, global_position AS g FROM (
             SELECT commit_order, global_position FROM {feed}
             UNION ALL SELECT commit_order, global_position FROM {checkpoints}) b
         WHERE (commit_order, global_position) > (0, 0)"
        ),
    )
    .await?;
    // An event's new order: 1 + the number of boundaries below its position.
    let order = |c: &str, g: &str| {
        format!("1 + (SELECT count(*) FROM dtx_feed_bounds b WHERE (b.c, b.g) < ({c}, {g}))")
    };
    // A checkpoint's new position: the end of its segment (the start of the feed stays).
    let checkpoint = format!(
        "commit_order = CASE WHEN (commit_order, global_position) > (0, 0)
                             THEN {} ELSE 0 END,
         global_position = CASE WHEN (commit_order, global_position) > (0, 0)
                                THEN GREATEST(
                                    (SELECT COALESCE(max(global_position), 0) FROM {events}),
                                    (SELECT COALESCE(max(global_position), 0) FROM {archive}))
                                ELSE 0 END",
        order("commit_order", "global_position")
    );
    report.checkpoints += exec(&mut tx, &format!("UPDATE {feed} SET {checkpoint}")).await?;
    report.checkpoints += exec(
        &mut tx,
        &format!(
            "UPDATE {checkpoints} SET {checkpoint}, owner = NULL, lease_until = NULL,
                 failed_commit_order = CASE WHEN failed_commit_order IS NULL THEN NULL
                                            ELSE {} END",
            order("failed_commit_order", "failed_position")
        ),
    )
    .await?;
    exec(
        &mut tx,
        &format!(
            "UPDATE {skips} SET commit_order = {}",
            order("commit_order", "global_position")
        ),
    )
    .await?;
    // Archived events are re-based with the others: the feed reads both tables.
    let rebase = |table: &str| {
        format!(
            "UPDATE {table} SET commit_order = {}",
            order("commit_order", "global_position")
        )
    };
    report.events =
        exec(&mut tx, &rebase(&events)).await? + exec(&mut tx, &rebase(&archive)).await?;
    // This transaction has an id now; every re-based order must lie below it, so that readers
    // see the events once it commits and later appends sort after them.
    let (after, _) = positions(&mut tx, &check_sql(schema)).await?;
    let (own,): (i64,) = sqlx::query_as("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::storage)?;
    if after >= to_u64(own) {
        tx.rollback().await.map_err(Error::storage)?;
        return Err(Error::storage(format!(
            "cannot re-base the feed: it needs orders up to {after}, but this cluster's \
             transaction ids are at {own}; run the repair again after {} more transactions",
            after - to_u64(own) + 1
        )));
    }
    tx.commit().await.map_err(Error::storage)?;
    report.repaired = true;
    tracing::warn!(
        stored,
        next_xid,
        events = report.events,
        checkpoints = report.checkpoints,
        "the restored feed was re-based below this cluster's transaction ids"
    );
    Ok(report)
}

/// Runs one statement of the repair; returns the rows it changed.
async fn exec(conn: &mut PgConnection, sql: &str) -> Result<u64> {
    Ok(sqlx::query(sql)
        .execute(conn)
        .await
        .map_err(Error::storage)?
        .rows_affected())
}

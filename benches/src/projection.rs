//! Projection rows, in a schema of their own (`bench_projection`, so that the feed holds only
//! their events):
//!
//! - `projection_catch_up`: a `#[projection]` read model (an upsert per event: per stream, a
//!   count and a sum) rebuilt by [`ProjectionRunner::run_once`] from a reset checkpoint over
//!   100 000 `Credited` events of 1000 streams, mixed with 10 000 `Noted` events it does not
//!   handle, vs a hand-written catch-up in plain SQL on the same pool ([`BARE_READ`], an upsert
//!   per event, a checkpoint `UPDATE`, a commit, per batch of [`BATCH`] events). Time per
//!   event; the rounds of the two sides alternate.
//! - `projection_lag`: the time from an append's return (committed) to its effect being visible
//!   in the read model, polled on a connection of its own, with one writer appending one event
//!   at a time and a started runner following the feed (woken by `LISTEN/NOTIFY`), vs the
//!   round trip of a single-row INSERT (one commit) on the same pool.

use crate::{BoxError, Options, Stats, report, to_i64};
use dtx::projection::{Event, Projection, ProjectionRunner, RunnerConfig};
use dtx::{
    DomainEvent, EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId,
    UnitOfWork,
};
use dtx_postgres::{PgCheckpointStore, PgEventStore, PgUnitOfWork};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The schema of the projection rows' event store, checkpoints and read models.
const SCHEMA: &str = "bench_projection";
/// Events applied by one catch-up round: `STREAMS` streams of `PER_STREAM` events.
const STREAMS: u64 = 1000;
const PER_STREAM: u64 = 100;
const EVENTS: u64 = STREAMS * PER_STREAM;
/// Events applied (and checkpoints moved) per transaction, by both sides.
const BATCH: usize = 500;
/// Feed events one read of the runner looks at (it keeps the handled ones).
const SCAN: usize = 2000;

/// The baseline's read of the feed: the next `$3` events of type `$4` after ($1, $2), below
/// the oldest running transaction.
const BARE_READ: &str = "SELECT stream_id, data::text AS data, commit_order, global_position
    FROM bench_projection.event_store
    WHERE (commit_order, global_position) > ($1, $2)
      AND commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
      AND event_type = $4
    ORDER BY commit_order, global_position LIMIT $3";

/// The read model's write of one event, on both sides (`{table}` replaced).
const UPSERT: &str = "INSERT INTO {table} AS b (stream_id, events, total) VALUES ($1, 1, $2)
    ON CONFLICT (stream_id) DO UPDATE SET events = b.events + 1, total = b.total + EXCLUDED.total";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Credited {
    amount: u64,
    memo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Noted {
    text: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum LedgerEvent {
    Credited(Credited),
    Noted(Noted),
}

/// The dtx side's read model: per stream, the `Credited` events applied and their sum.
#[derive(Debug, Clone)]
struct Balances {
    upsert: String,
}

/// What the read model's handlers return.
type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtx::projection(name = "bench_balances")]
impl Balances {
    async fn credited(
        &self,
        credited: &Credited,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> HandlerResult {
        sqlx::query(&self.upsert)
            .bind(meta.stream_id.as_str())
            .bind(to_i64(credited.amount))
            .execute(PgUnitOfWork::connection_of(uow).await?)
            .await?;
        Ok(())
    }

    #[clear]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> HandlerResult {
        sqlx::query("DELETE FROM bench_projection.balances_dtx")
            .execute(PgUnitOfWork::connection_of(uow).await?)
            .await?;
        Ok(())
    }
}

fn credited(stream: &StreamId, n: u64) -> NewEvent {
    let event = LedgerEvent::Credited(Credited {
        amount: n % 1000,
        memo: format!("credit number {n} for the projection benchmark, ref {n:08}"),
    });
    NewEvent::encode(stream, &event, EventMetadata::default()).expect("encodes")
}

fn noted(stream: &StreamId, n: u64) -> NewEvent {
    let event = LedgerEvent::Noted(Noted {
        text: format!("a note the read model ignores, number {n}"),
    });
    NewEvent::encode(stream, &event, EventMetadata::default()).expect("encodes")
}

pub(crate) async fn projection_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    if !options.wants("projection_catch_up") && !options.wants("projection_lag") {
        return Ok(());
    }
    dtx_postgres::migrate_in_schema(pool, SCHEMA).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_projection.balances_dtx (
             stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL, total BIGINT NOT NULL);
         CREATE TABLE bench_projection.balances_bare (
             stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL, total BIGINT NOT NULL);
         CREATE TABLE bench_projection.bare_checkpoint (
             commit_order BIGINT NOT NULL, global_position BIGINT NOT NULL, applied BIGINT NOT NULL);
         INSERT INTO bench_projection.bare_checkpoint VALUES (0, 0, 0);",
    )
    .execute(pool)
    .await?;
    let store = PgEventStore::new(pool.clone()).with_schema(SCHEMA)?;
    let checkpoints = PgCheckpointStore::new(pool.clone()).with_schema(SCHEMA)?;
    // One runner (one lease owner) for both rows: the lag row's started runner takes over the
    // checkpoint the catch-up rounds leased.
    let runner = ProjectionRunner::new(Arc::new(store.clone()), Arc::new(checkpoints))
        .config(RunnerConfig {
            batch_size: BATCH,
            scan_size: SCAN,
            ..RunnerConfig::default()
        })
        .projection(Balances {
            upsert: UPSERT.replace("{table}", "bench_projection.balances_dtx"),
        });
    if options.wants("projection_catch_up") {
        catch_up(options, pool, &store, &runner).await?;
    }
    if options.wants("projection_lag") {
        lag(options, pool, &store, &runner).await?;
    }
    Ok(())
}

/// Appends the catch-up rows' events: 10 passes over the streams, 10 events to each, and 10
/// `Noted` events to one stream of notes per 10 streams; four writers.
async fn fill(store: &PgEventStore) -> Result<(), BoxError> {
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for pass in 0..10 {
                    for s in (w..STREAMS).step_by(4) {
                        let stream = StreamId::new(format!("Ledger-{s}"))?;
                        let first = pass * PER_STREAM / 10;
                        let events = (first..first + PER_STREAM / 10)
                            .map(|n| credited(&stream, n))
                            .collect();
                        store
                            .append(&stream, ExpectedVersion::Exact(first), events)
                            .await?;
                        if s % 10 == 0 {
                            let notes = StreamId::new(format!("Notes-{s}"))?;
                            let events = (pass * 10..pass * 10 + 10)
                                .map(|n| noted(&notes, n))
                                .collect();
                            store
                                .append(&notes, ExpectedVersion::Exact(pass * 10), events)
                                .await?;
                        }
                    }
                }
                Ok::<(), dtx::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Rows (events, sum) of a read model table.
async fn totals(pool: &PgPool, table: &str) -> Result<(i64, i64), BoxError> {
    Ok(sqlx::query_as(&format!(
        "SELECT COALESCE(sum(events), 0)::int8, COALESCE(sum(total), 0)::int8 FROM {table}"
    ))
    .fetch_one(pool)
    .await?)
}

/// The baseline: the whole feed applied by hand, `BATCH` events a transaction; the events
/// applied.
async fn bare_catch_up(pool: &PgPool, upsert: &str) -> Result<u64, BoxError> {
    let mut at: (i64, i64) = (0, 0);
    let mut applied = 0u64;
    loop {
        let rows = sqlx::query(BARE_READ)
            .bind(at.0)
            .bind(at.1)
            .bind(to_i64(BATCH as u64))
            .bind(<Credited as Event>::EVENT_TYPE)
            .fetch_all(pool)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(applied);
        };
        let end: (i64, i64) = (last.try_get(2)?, last.try_get(3)?);
        let mut tx = pool.begin().await?;
        for row in &rows {
            let credited: Credited = serde_json::from_str(row.try_get::<&str, _>(1)?)?;
            sqlx::query(upsert)
                .bind(row.try_get::<&str, _>(0)?)
                .bind(to_i64(credited.amount))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE bench_projection.bare_checkpoint
             SET commit_order = $1, global_position = $2, applied = applied + $3",
        )
        .bind(end.0)
        .bind(end.1)
        .bind(to_i64(rows.len() as u64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        at = end;
        applied += rows.len() as u64;
    }
}

/// `projection_catch_up`.
async fn catch_up(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
    runner: &ProjectionRunner,
) -> Result<(), BoxError> {
    fill(store).await?;
    let bare_upsert = UPSERT.replace("{table}", "bench_projection.balances_bare");
    let (mut dtx, mut bare) = (Vec::new(), Vec::new());
    let mut expected = None;
    for round in 0..options.projection_rounds {
        // Each side starts from an empty read model, its table freshly truncated and the
        // dirty pages flushed (untimed); the sides take turns going first.
        for side in [round % 2, 1 - round % 2] {
            let table = if side == 0 {
                "bench_projection.balances_dtx"
            } else {
                "bench_projection.balances_bare"
            };
            sqlx::raw_sql(&format!(
                "TRUNCATE {table};
                 UPDATE bench_projection.bare_checkpoint
                 SET commit_order = 0, global_position = 0, applied = 0;
                 CHECKPOINT"
            ))
            .execute(pool)
            .await?;
            let started = Instant::now();
            let applied = if side == 0 {
                runner.reset(Balances::NAME).await?;
                let started = Instant::now();
                let applied = runner.run_once().await? as u64;
                dtx.push(started.elapsed());
                applied
            } else {
                let applied = bare_catch_up(pool, &bare_upsert).await?;
                bare.push(started.elapsed());
                applied
            };
            let got = totals(pool, table).await?;
            assert_eq!(applied, EVENTS, "{table}: events applied");
            assert_eq!(got.0, to_i64(EVENTS), "{table}: events in the read model");
            assert_eq!(*expected.get_or_insert(got), got, "{table}: sums differ");
        }
    }
    let per = u32::try_from(EVENTS)?;
    let row = (Stats::of(dtx, per), Stats::of(bare, per));
    if !options.json {
        println!(
            "{:<22} {:.0} events/s (baseline {:.0} events/s), batch_size {BATCH}, scan_size {SCAN}",
            "",
            1e6 / row.0.p50_us,
            1e6 / row.1.p50_us
        );
    }
    report(options, "projection_catch_up", "bare_sql_catch_up", &row);
    Ok(())
}

/// `projection_lag`.
async fn lag(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
    runner: &ProjectionRunner,
) -> Result<(), BoxError> {
    let handle = runner.start()?;
    // The poller's own connection: polling never waits for the pool.
    let mut poller = sqlx::PgConnection::connect_with(&*pool.connect_options()).await?;
    let stream = StreamId::new("Ledger-lag")?;
    // Polls the read model until the stream's count reaches `count`, for at most `within`.
    let visible = async |poller: &mut sqlx::PgConnection,
                         count: i64,
                         within: Duration|
           -> Result<(), BoxError> {
        let deadline = Instant::now() + within;
        loop {
            let events: Option<i64> = sqlx::query_scalar(
                "SELECT events FROM bench_projection.balances_dtx WHERE stream_id = $1",
            )
            .bind(stream.as_str())
            .fetch_optional(&mut *poller)
            .await?;
            if events.unwrap_or(0) >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("event {count} not applied within {within:?}").into());
            }
        }
    };
    // Let the runner catch up with whatever the feed holds.
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credited(&stream, 0)],
        )
        .await?;
    visible(&mut poller, 1, Duration::from_mins(2)).await?;

    let samples = options.iterations;
    let warmup = (samples / 10).max(5);
    let (mut dtx, mut bare) = (Vec::new(), Vec::new());
    for i in 1..=(warmup + samples) as u64 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(i),
                vec![credited(&stream, i)],
            )
            .await?;
        let started = Instant::now();
        visible(&mut poller, to_i64(i) + 1, Duration::from_secs(10)).await?;
        let lag = started.elapsed();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)",
        )
        .bind("baseline-projection-lag")
        .bind(to_i64(i))
        .bind(r#"{"amount": 1, "memo": "a baseline row"}"#)
        .execute(pool)
        .await?;
        let insert = started.elapsed();
        tokio::time::sleep(Duration::from_millis(2)).await;
        if i > warmup as u64 {
            dtx.push(lag);
            bare.push(insert);
        }
    }
    handle.stop().await;
    poller.close().await?;
    report(
        options,
        "projection_lag",
        "insert_1_row",
        &(Stats::of(dtx, 1), Stats::of(bare, 1)),
    );
    Ok(())
}

//! The dtx benchmark harness.
//!
//! ```sh
//! cargo run --release -p dtx-bench              # table
//! cargo run --release -p dtx-bench -- --json    # one JSON object per row
//! cargo run --release -p dtx-bench -- append    # only rows whose name contains "append"
//! cargo run --release -p dtx-bench -- --http-secs 10 --http-rounds 3 http_command
//! cargo run --release -p dtx-bench -- --projection-rounds 5 projection
//! ```
//!
//! Every row is measured against a baseline doing the same work without dtx (plain sqlx on the
//! same pool, a direct function call, a bare moka cache), in the same run, with dtx and baseline
//! iterations interleaved so that drift of this noisy machine hits both alike. `ratio` = dtx
//! median / baseline median. Rows of sub-microsecond operations time batches of calls and
//! report the time of one call. It reads
//! `DATABASE_URL` (default: the local server) and works in a database `dtx_bench` (or the one
//! `DTX_BENCH_DATABASE` names, so that runs side by side on one server do not drop each other's)
//! that it recreates on every run.

use dtx::{
    Aggregate, Apply, DomainEvent, EventMetadata, EventStore, ExpectedVersion, NewEvent,
    Repository, StreamId,
};
use dtx_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool, Row};
use std::str::FromStr;
use std::time::{Duration, Instant};

mod cqrs;
mod http_load;
mod idempotency;
mod inbox_kafka;
mod inbox_nats;
mod lifecycle;
mod outbox;
mod personal;
mod projection;
mod resilience;
mod saga;
mod trace;
mod two_services;
mod upcast;

type BoxError = Box<dyn std::error::Error>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
    memo: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum AccountEvent {
    Deposited(Deposited),
}

/// An account replayed from its events only.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent, snapshots = false)]
struct Account {
    id: dtx::Id<Account>,
    balance: u64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

/// The same account, snapshotted every 1000 events.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent, name = "SnapAccount", snapshot_every = 1000)]
struct SnapAccount {
    id: dtx::Id<SnapAccount>,
    balance: u64,
}

impl Apply<Deposited> for SnapAccount {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

fn deposit(n: u64) -> Deposited {
    Deposited {
        amount: n,
        memo: format!("monthly deposit number {n} for the benchmark account, ref {n:08}"),
    }
}

fn payload(n: u64) -> String {
    serde_json::to_string(&deposit(n)).unwrap_or_default()
}

/// Options from the command line.
struct Options {
    json: bool,
    filter: Option<String>,
    iterations: usize,
    /// Seconds each side of an HTTP load row runs per round.
    http_secs: f64,
    /// Rounds of the HTTP load rows (each runs every side once).
    http_rounds: usize,
    /// Rounds of the projection catch-up row (each runs every side once).
    projection_rounds: usize,
}

impl Options {
    fn parse() -> Result<Self, BoxError> {
        let mut options = Self {
            json: false,
            filter: None,
            iterations: 400,
            http_secs: 5.0,
            http_rounds: 3,
            projection_rounds: 3,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--json" => options.json = true,
                "--iterations" => {
                    options.iterations =
                        args.next().ok_or("--iterations needs a number")?.parse()?;
                }
                "--http-secs" => {
                    options.http_secs = args.next().ok_or("--http-secs needs a number")?.parse()?;
                }
                "--http-rounds" => {
                    options.http_rounds = args
                        .next()
                        .ok_or("--http-rounds needs a number")?
                        .parse::<usize>()?
                        .max(1);
                }
                "--projection-rounds" => {
                    options.projection_rounds = args
                        .next()
                        .ok_or("--projection-rounds needs a number")?
                        .parse::<usize>()?
                        .max(1);
                }
                "--help" | "-h" => {
                    println!(
                        "usage: dtx-bench [--json] [--iterations N] [--http-secs S] [--http-rounds N] [--projection-rounds N] [FILTER]"
                    );
                    std::process::exit(0);
                }
                filter => options.filter = Some(filter.to_owned()),
            }
        }
        Ok(options)
    }

    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }
}

/// Medians and tails of one side of a row.
#[derive(Clone, Copy)]
struct Stats {
    p50_us: f64,
    p99_us: f64,
}

impl Stats {
    /// The quantiles of samples that each timed `batch` calls, per call.
    fn of(mut samples: Vec<Duration>, batch: u32) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "index of a quantile"
            )]
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[i].as_secs_f64() * 1e6 / f64::from(batch)
        };
        Self {
            p50_us: at(0.5),
            p99_us: at(0.99),
        }
    }
}

/// Measures `dtx` and `baseline` alternately, `iterations` times each after a warm-up; each is
/// called with the iteration's number.
async fn pair(
    iterations: usize,
    dtx: impl AsyncFnMut(u64),
    baseline: impl AsyncFnMut(u64),
) -> (Stats, Stats) {
    pair_batched(iterations, 1, dtx, baseline).await
}

/// Like [`pair`], for operations too fast to time one by one: each of the `iterations` samples
/// of a side times `batch` consecutive calls (numbered on from `sample * batch`), and the stats
/// are per call. The sides still alternate sample by sample.
async fn pair_batched(
    iterations: usize,
    batch: u32,
    mut dtx: impl AsyncFnMut(u64),
    mut baseline: impl AsyncFnMut(u64),
) -> (Stats, Stats) {
    let warmup = (iterations / 10).max(5);
    let batch = batch.max(1);
    let (mut a, mut b) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for i in 0..warmup + iterations {
        let first = i as u64 * u64::from(batch);
        let calls = first..first + u64::from(batch);
        let start = Instant::now();
        for n in calls.clone() {
            dtx(n).await;
        }
        let dtx_time = start.elapsed();
        let start = Instant::now();
        for n in calls {
            baseline(n).await;
        }
        let baseline_time = start.elapsed();
        if i >= warmup {
            a.push(dtx_time);
            b.push(baseline_time);
        }
    }
    (Stats::of(a, batch), Stats::of(b, batch))
}

fn report(options: &Options, name: &str, baseline: &str, (dtx, base): &(Stats, Stats)) {
    let ratio = dtx.p50_us / base.p50_us;
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "name": name,
                "p50_us": round(dtx.p50_us),
                "p99_us": round(dtx.p99_us),
                "baseline": baseline,
                "baseline_p50_us": round(base.p50_us),
                "baseline_p99_us": round(base.p99_us),
                "ratio": round(ratio),
            })
        );
    } else {
        // Sub-microsecond rows need the nanoseconds.
        let d = if base.p50_us < 10.0 { 3 } else { 1 };
        println!(
            "{name:<22} {:>10.d$} {:>10.d$}   {baseline:<26} {:>10.d$} {:>10.d$}   {ratio:>6.2}",
            dtx.p50_us, dtx.p99_us, base.p50_us, base.p99_us
        );
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Three decimals: nanoseconds for the times of the sub-microsecond rows.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn bench_database() -> Result<PgPool, BoxError> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = PgConnectOptions::from_str(&url)?;
    let name = std::env::var("DTX_BENCH_DATABASE").unwrap_or_else(|_| "dtx_bench".to_owned());
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "DTX_BENCH_DATABASE `{name}`: use 1 to 63 lower-case letters, digits and `_`"
        )
        .into());
    }
    let mut conn = admin.connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                if let Ok(mode) = std::env::var("BENCH_PLAN_CACHE_MODE") {
                    conn.execute(format!("SET plan_cache_mode = {mode}").as_str())
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(admin.database(&name))
        .await?;
    dtx_postgres::migrate(&pool).await?;
    pool.execute(
        "CREATE TABLE baseline_events (
            id BIGSERIAL PRIMARY KEY,
            stream_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            data JSONB NOT NULL,
            UNIQUE (stream_id, version))",
    )
    .await?;
    Ok(pool)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = Options::parse()?;
    let pool = bench_database().await?;
    let store = PgEventStore::new(pool.clone());
    let settings = sqlx::query(
        "SELECT current_setting('server_version') AS v, current_setting('synchronous_commit') AS s",
    )
    .fetch_one(&pool)
    .await?;
    if !options.json {
        println!(
            "dtx-bench: PostgreSQL {}, synchronous_commit={}, 1 client, {} iterations per side (times in µs)\n",
            settings.get::<String, _>("v"),
            settings.get::<String, _>("s"),
            options.iterations
        );
        println!(
            "{:<22} {:>10} {:>10}   {:<26} {:>10} {:>10}   {:>6}",
            "row", "p50", "p99", "baseline", "p50", "p99", "ratio"
        );
    }
    append_rows(&options, &pool, &store).await?;
    lifecycle::lifecycle_rows(&options, &pool).await?;
    personal::personal_rows(&options, &store).await?;
    load_rows(&options, &pool, &store).await?;
    upcast::upcast_rows(&options, &store).await?;
    cqrs::cqrs_rows(&options, &pool, &store).await?;
    saga::saga_rows(&options, &pool).await?;
    idempotency::idempotency_rows(&options, &pool).await?;
    outbox::outbox_rows(&options, &pool).await?;
    inbox_nats::inbox_rows(&options, &pool).await?;
    projection::projection_rows(&options, &pool).await?;
    inbox_kafka::inbox_rows(&options, &pool).await?;
    http_load::http_rows(&options, &pool).await?;
    trace::trace_rows(&options).await;
    resilience::resilience_rows(&options).await;
    two_services::two_services_rows(&options).await?;
    Ok(())
}

/// `append_1`, `append_100` and the server-CPU rows of one-event appends.
async fn append_rows(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
) -> Result<(), BoxError> {
    let n = options.iterations;
    if options.wants("append_1") {
        let stream = StreamId::new("Bench-append-1")?;
        let row = pair(
            n,
            async |i| {
                let event = NewEvent::encode(&stream, &AccountEvent::Deposited(deposit(i)), EventMetadata::default())
                    .expect("encodes");
                store.append(&stream, ExpectedVersion::Exact(i), vec![event]).await.expect("append");
            },
            async |i| {
                sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                    .bind("baseline-append-1")
                    .bind(to_i64(i) + 1)
                    .bind(payload(i))
                    .execute(pool)
                    .await
                    .expect("insert");
            },
        )
        .await;
        report(options, "append_1", "insert_1_row", &row);
    }

    if options.wants("append_100") {
        let stream = StreamId::new("Bench-append-100")?;
        let row = pair(
            n / 2,
            async |i| {
                let events = (0..100)
                    .map(|k| NewEvent::encode(&stream, &AccountEvent::Deposited(deposit(k)), EventMetadata::default()).expect("encodes"))
                    .collect();
                store.append(&stream, ExpectedVersion::Exact(i * 100), events).await.expect("append");
            },
            async |i| {
                let versions: Vec<i64> = (1..=100).map(|k| to_i64(i) * 100 + k).collect();
                let data: Vec<String> = (0..100).map(payload).collect();
                sqlx::query(
                    "INSERT INTO baseline_events (stream_id, version, data)
                     SELECT 'baseline-append-100', v, d::jsonb FROM UNNEST($1::int8[], $2::text[]) AS t(v, d)",
                )
                .bind(&versions)
                .bind(&data)
                .execute(pool)
                .await
                .expect("insert");
            },
        )
        .await;
        report(options, "append_100", "insert_100_rows_unnest", &row);
    }
    append_server_cpu(options, pool).await
}

/// The CPU time the server process behind a connection has used so far (Linux, a server on this
/// machine: `/proc/<pid>/schedstat`, in nanoseconds), or `None` when it cannot be read.
fn backend_cpu(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// `append_1_server_cpu`, `append_1_any_server_cpu` and `append_1_outbox_server_cpu`: the
/// server's own CPU time per one-event append (`Exact`, `Any`, `Exact` with the outbox), against
/// the raw single-row INSERT, both on one connection (`synchronous_commit = off`) whose server
/// process is read from `/proc`.
/// Wall-clock rows on this shared machine drift by tens of percent; the CPU a backend spends on a
/// statement does not wait on the disk or on other processes, so it shows what a change of the
/// append statement costs or saves. Samples of 50 calls, the sides alternating.
async fn append_server_cpu(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    const BATCH: u32 = 50;
    // Without waiting for the WAL flush: the flush is the same for both sides, and its
    // kernel work (charged to the waiting backend) varies more than the statements themselves.
    let one = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET synchronous_commit = off").await?;
                Ok(())
            })
        })
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&one)
        .await?;
    if backend_cpu(pid).is_none() {
        eprintln!("append_*_server_cpu skipped (the server process is not readable here)");
        return Ok(());
    }
    let plain = PgEventStore::new(one.clone());
    let outbox = plain.clone().with_outbox(true);
    let rows = [
        ("append_1_server_cpu", &plain, false),
        ("append_1_any_server_cpu", &plain, true),
        ("append_1_outbox_server_cpu", &outbox, false),
    ];
    let samples = (options.iterations / 10).max(10);
    for (name, store, any) in rows {
        if !options.wants(name) {
            continue;
        }
        let stream = StreamId::new(format!("Bench-cpu-{name}"))?;
        let baseline = format!("baseline-cpu-{name}");
        let (mut dtx, mut raw) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        for sample in 0..samples + 2 {
            let start = backend_cpu(pid).ok_or("backend gone")?;
            for k in n..n + u64::from(BATCH) {
                let event = NewEvent::encode(
                    &stream,
                    &AccountEvent::Deposited(deposit(k)),
                    EventMetadata::default(),
                )?;
                let expected = if any {
                    ExpectedVersion::Any
                } else {
                    ExpectedVersion::Exact(k)
                };
                store.append(&stream, expected, vec![event]).await?;
            }
            let middle = backend_cpu(pid).ok_or("backend gone")?;
            for k in n..n + u64::from(BATCH) {
                sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                    .bind(&baseline)
                    .bind(to_i64(k) + 1)
                    .bind(payload(k))
                    .execute(&one)
                    .await?;
            }
            let end = backend_cpu(pid).ok_or("backend gone")?;
            n += u64::from(BATCH);
            // The first two samples warm the caches and the prepared statements.
            if sample >= 2 {
                dtx.push(middle.saturating_sub(start));
                raw.push(end.saturating_sub(middle));
            }
        }
        let row = (Stats::of(dtx, BATCH), Stats::of(raw, BATCH));
        report(options, name, "insert_1_row_server_cpu", &row);
    }
    Ok(())
}

/// `load_1000` and `load_1000_snapshot`.
async fn load_rows(options: &Options, pool: &PgPool, store: &PgEventStore) -> Result<(), BoxError> {
    let n = options.iterations;

    if options.wants("load_1000") {
        let plain = Repository::<Account>::new(store.clone());
        let snapshotted = Repository::<SnapAccount>::new(store.clone());
        let plain_id = dtx::Id::<Account>::new();
        let snap_id = dtx::Id::<SnapAccount>::new();
        let mut a = plain.load(&plain_id).await?;
        let mut s = snapshotted.load(&snap_id).await?;
        for k in 0..10 {
            a.record((0..100).map(|j| deposit(k * 100 + j)))?;
            s.record((0..100).map(|j| deposit(k * 100 + j)))?;
            plain.save(&mut a).await?;
            snapshotted.save(&mut s).await?;
        }
        let baseline_stream = Account::stream_id(&plain_id)?;
        let baseline = async |_| {
            let rows = sqlx::query("SELECT version, data::text AS data FROM event_store WHERE stream_id = $1 ORDER BY version")
                .bind(baseline_stream.as_str())
                .fetch_all(pool)
                .await
                .expect("select");
            let balance: u64 = rows
                .iter()
                .map(|r| {
                    serde_json::from_str::<Deposited>(r.get::<&str, _>("data"))
                        .expect("decodes")
                        .amount
                })
                .sum();
            assert!(balance > 0);
        };
        if options
            .filter
            .as_deref()
            .is_none_or(|f| "load_1000".contains(f) && !f.contains("snapshot"))
        {
            let row = pair(
                n / 4,
                async |_| {
                    let loaded = plain.load(&plain_id).await.expect("load");
                    assert_eq!(loaded.version(), 1000);
                },
                baseline,
            )
            .await;
            report(options, "load_1000", "select_1000_rows_decode", &row);
        }
        if options.wants("load_1000_snapshot") {
            let row = pair(
                n / 4,
                async |_| {
                    let loaded = snapshotted.load(&snap_id).await.expect("load");
                    assert_eq!(loaded.version(), 1000);
                },
                baseline,
            )
            .await;
            report(
                options,
                "load_1000_snapshot",
                "select_1000_rows_decode",
                &row,
            );
        }
    }
    Ok(())
}

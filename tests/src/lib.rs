//! Cross-crate integration tests of dtx; the tests themselves live in `tests/tests/`.
//!
//! This library holds what several test files share.

use dtx_postgres::PgEventStore;

pub mod brokers;
pub mod fault_proxy;
pub mod inbox_nats;
pub mod kafka_inbox;
pub mod projections;

/// The repository's README: every `rust` block in it runs as a doctest of this package
/// (`cargo test -p tests --doc`), the PostgreSQL ones against `DATABASE_URL`.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// A [`PgEventStore`] on a fresh, migrated database.
///
/// # Panics
/// When the test server cannot be reached: database tests need PostgreSQL (`scripts/test.sh`
/// starts it).
pub async fn pg_store() -> PgEventStore {
    let pool = dtx_postgres::testing::fresh_database(16)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed for this test: {e}",
                dtx_postgres::testing::database_url()
            )
        });
    PgEventStore::new(pool)
}

/// The URL of the database `pool` connects to, for a child process of a test (the crash tests'
/// workers, relays and runners).
///
/// # Panics
/// When the pool's options name no database.
pub fn database_url(pool: &sqlx::PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options
            .get_database()
            .unwrap_or_else(|| panic!("the test pool names no database"))
    )
}

/// An event store whose every call first yields to the scheduler, as real I/O would: lets
/// concurrency tests interleave tasks on the in-memory backend, which never waits otherwise.
#[derive(Debug, Clone, Default)]
pub struct Yielding<S>(pub S);

#[async_trait::async_trait]
impl<S: dtx::EventStore> dtx::EventStore for Yielding<S> {
    async fn append(
        &self,
        stream: &dtx::StreamId,
        expected: dtx::ExpectedVersion,
        events: Vec<dtx::NewEvent>,
    ) -> dtx::Result<dtx::AppendResult> {
        tokio::task::yield_now().await;
        self.0.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &dtx::StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::RecordedEvent>> {
        tokio::task::yield_now().await;
        self.0.read_stream(stream, from_version, max_count).await
    }

    async fn read_stream_data(
        &self,
        stream: &dtx::StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::EventData>> {
        tokio::task::yield_now().await;
        self.0
            .read_stream_data(stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: dtx::GlobalPosition,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::RecordedEvent>> {
        tokio::task::yield_now().await;
        self.0.read_all(after, max_count).await
    }

    async fn stream_version(&self, stream: &dtx::StreamId) -> dtx::Result<u64> {
        tokio::task::yield_now().await;
        self.0.stream_version(stream).await
    }

    async fn load_snapshot(&self, stream: &dtx::StreamId) -> dtx::Result<Option<dtx::Snapshot>> {
        tokio::task::yield_now().await;
        self.0.load_snapshot(stream).await
    }

    async fn save_snapshot(
        &self,
        stream: &dtx::StreamId,
        snapshot: dtx::Snapshot,
    ) -> dtx::Result<()> {
        tokio::task::yield_now().await;
        self.0.save_snapshot(stream, snapshot).await
    }

    async fn close_stream(&self, stream: &dtx::StreamId) -> dtx::Result<u64> {
        tokio::task::yield_now().await;
        self.0.close_stream(stream).await
    }

    async fn archive_stream(&self, stream: &dtx::StreamId) -> dtx::Result<u64> {
        tokio::task::yield_now().await;
        self.0.archive_stream(stream).await
    }

    async fn stream_state(&self, stream: &dtx::StreamId) -> dtx::Result<dtx::StreamState> {
        tokio::task::yield_now().await;
        self.0.stream_state(stream).await
    }

    async fn read_archived_stream_data(
        &self,
        stream: &dtx::StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::EventData>> {
        tokio::task::yield_now().await;
        self.0
            .read_archived_stream_data(stream, from_version, max_count)
            .await
    }

    async fn forget(&self, subject: &str) -> dtx::Result<bool> {
        tokio::task::yield_now().await;
        self.0.forget(subject).await
    }
}

/// A [`dtx_postgres::PgSagaStore`] and [`PgEventStore`] on one fresh, migrated database.
///
/// # Panics
/// When the test server cannot be reached.
pub async fn pg_saga_stores() -> (
    std::sync::Arc<dyn dtx::saga::SagaStore>,
    dtx::SharedEventStore,
) {
    let events = pg_store().await;
    let sagas = dtx_postgres::PgSagaStore::new(events.pool().clone());
    (std::sync::Arc::new(sagas), std::sync::Arc::new(events))
}

/// The saga the multi-process crash test runs: three steps, two compensations, each recording
/// its effect in PostgreSQL under its idempotency key.
pub mod crash {
    use dtx::saga::{StepContext, StepError};
    use serde::{Deserialize, Serialize};
    use sqlx::PgPool;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// The pool steps record their effects with (set once per process).
    pub static POOL: OnceLock<PgPool> = OnceLock::new();

    /// Creates the effect tables.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn create_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS crash_effects (
                 key TEXT PRIMARY KEY, saga_id UUID NOT NULL, step TEXT NOT NULL,
                 phase TEXT NOT NULL, seq BIGSERIAL);
             CREATE TABLE IF NOT EXISTS crash_attempts (saga_id UUID NOT NULL, key TEXT NOT NULL);",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    /// A saga that fails at its third step when `fail` is set.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct CrashSaga {
        /// Make `ship` fail permanently (the saga then compensates).
        pub fail: bool,
        /// A little work each step does, in milliseconds, to widen the windows a kill can hit.
        pub work_ms: u64,
    }

    async fn effect(ctx: &StepContext, work_ms: u64) -> Result<(), StepError> {
        let pool = POOL.get().ok_or_else(|| StepError::permanent("no pool"))?;
        let key = ctx.idempotency_key();
        sqlx::query("INSERT INTO crash_attempts (saga_id, key) VALUES ($1, $2)")
            .bind(ctx.saga_id())
            .bind(&key)
            .execute(pool)
            .await?;
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        // The effect, once per idempotency key however often the step runs.
        sqlx::query(
            "INSERT INTO crash_effects (key, saga_id, step, phase) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key)
        .bind(ctx.saga_id())
        .bind(ctx.step())
        .bind(ctx.phase())
        .execute(pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        Ok(())
    }

    #[dtx::saga(name = "CrashSaga", max_retries = 5)]
    impl CrashSaga {
        #[step(compensate = release)]
        async fn reserve(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            effect(ctx, self.work_ms).await
        }

        async fn release(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            effect(ctx, self.work_ms).await
        }

        #[step(compensate = refund)]
        async fn charge(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            effect(ctx, self.work_ms).await
        }

        async fn refund(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            effect(ctx, self.work_ms).await
        }

        #[step]
        async fn ship(&mut self, ctx: &StepContext) -> Result<(), StepError> {
            if self.fail {
                return Err(StepError::permanent("no carrier"));
            }
            effect(ctx, self.work_ms).await
        }
    }
}

/// The generic plans of `statements`, by name, as PostgreSQL would run them with sequential
/// scans discouraged: a plan that still scans a table has no index to serve it.
///
/// # Panics
/// When a statement does not prepare.
pub async fn generic_plans<'a>(
    pool: &sqlx::PgPool,
    statements: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, String)> {
    // Detached: the settings below leave with the connection instead of going back to the pool.
    let mut conn = pool.acquire().await.expect("a connection").detach();
    sqlx::raw_sql("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .expect("settings");
    let mut plans = Vec::new();
    for (name, sql) in statements {
        let params = (1..=30)
            .filter(|n| sql.contains(&format!("${n}")))
            .max()
            .unwrap_or(0);
        sqlx::raw_sql(&format!("PREPARE probe AS {sql}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{name} does not prepare: {e}"));
        let args = if params == 0 {
            String::new()
        } else {
            format!("({})", vec!["NULL"; params].join(", "))
        };
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE probe{args}"))
            .fetch_all(&mut conn)
            .await
            .expect("a plan");
        sqlx::raw_sql("DEALLOCATE probe")
            .execute(&mut conn)
            .await
            .expect("deallocate");
        plans.push((name, plan.join("\n")));
    }
    plans
}

/// Appends `per_stream` events (in batches of 5, payload `{"n": 1..}`) to each of the streams
/// `Order-0` .. `Order-{streams - 1}`, all with this correlation id and `traceparent`: the
/// workload the broker tests publish and read back.
///
/// # Panics
/// When an append fails.
pub async fn append_order_streams(
    store: &PgEventStore,
    streams: u64,
    per_stream: u64,
    correlation: uuid::Uuid,
    traceparent: &str,
) {
    use dtx::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId};
    for round in 0..per_stream / 5 {
        for s in 0..streams {
            let stream = StreamId::new(format!("Order-{s}")).expect("a stream id");
            let events = (1..=5)
                .map(|k| {
                    let mut e =
                        NewEvent::from_json("OrderEvent", &serde_json::json!({"n": round * 5 + k}))
                            .expect("json");
                    e.metadata =
                        EventMetadata::correlated(correlation).with_traceparent(traceparent);
                    e
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Exact(round * 5), events)
                .await
                .expect("append");
        }
    }
}

/// Spawns `run` (a relay's or a consumer's `run`) with a shutdown future that completes when
/// the returned sender is used or dropped; the handle answers with what `run` returned.
///
/// ```no_run
/// # async fn demo(relay: dtx_postgres::OutboxRelay) {
/// let (stop, running) = tests::spawn_until_stopped(|stopped| async move { relay.run(stopped).await });
/// stop.send(()).unwrap();
/// running.await.unwrap().unwrap();
/// # }
/// ```
pub fn spawn_until_stopped<Fut>(
    run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Fut::Output>,
)
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(Box::pin(async {
        let _ = stopped.await;
    })));
    (stop, running)
}

/// The global feed of `store` once it shows at least `events` events (waiting at most ten
/// seconds), read from the start.
///
/// PostgreSQL's feed passes no transaction still running anywhere in the cluster (another
/// test's migration, autovacuum): an event committed a moment ago can wait behind one, so a test
/// that reads the feed or runs a projection right after appending waits for it first.
///
/// # Panics
/// When a read fails, or the feed shows fewer events after ten seconds.
pub async fn feed_showing(store: &dyn dtx::EventStore, events: usize) -> Vec<dtx::RecordedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let feed = store
            .read_all(dtx::GlobalPosition::START, usize::MAX)
            .await
            .expect("feed read");
        if feed.len() >= events {
            return feed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed shows {} events after 10 s, not {events}",
            feed.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs relay passes until one does some work (publishes, fails or dead-letters a message), at
/// most for ten seconds, and returns that pass.
///
/// A single pass may do nothing: the feed waits while an older transaction anywhere in the
/// cluster (another test, autovacuum) is still running, so a test must not assert on the first.
///
/// # Panics
/// When a pass fails, or no pass did any work within ten seconds.
pub async fn pass_with_work(relay: &dtx_postgres::OutboxRelay) -> dtx_postgres::RelayPass {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pass = relay.run_once().await.expect("relay pass");
        if pass.published + pass.failed + pass.dead > 0 {
            return pass;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no relay pass did any work in 10 s: {pass:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

//! The `dtx` binary against a real PostgreSQL: every command's help, migrations, and a
//! database with sagas in every state, an outbox dead letter, a lagging and a failed projection,
//! an inbox dead letter and a transaction held open. Outputs are snapshot-tested (ids, times,
//! ages and positions normalised) and every `--json` is parsed.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use dtx::inbox::{InboundMessage, InboxStore as _};
use dtx::outbox::{MemoryPublisher, RelayOptions};
use dtx::projection::{CheckpointKey, CheckpointStore as _, Failure, ProjectionRunner};
use dtx::saga::{
    SagaEvent, SagaOrchestrator, SagaStatus, SagaStore as _, StepError, WorkerOptions,
};
use dtx::{
    DomainEvent, EventStore as _, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent,
    StreamId, UnitOfWork,
};
use dtx_cli::{Cli, Operator, Outcome, Parser as _};
use dtx_postgres::{PgCheckpointStore, PgEventStore, PgInbox, PgOutbox, PgSagaStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Connection as _, Executor as _, PgPool};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// What the tests register: a saga with a compensation per step and a wait, and a projection.

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Shipment {
    /// `ship`: shipping fails for good; `refund`: so does the refund; `refund-later`: the
    /// refund fails and is retried later.
    fail: Option<String>,
}

#[allow(clippy::unused_async, reason = "the steps do no I/O")]
#[dtx::saga(name = "Shipment", max_retries = 3)]
impl Shipment {
    #[step(compensate = release)]
    async fn reserve(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    async fn release(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[step(compensate = refund)]
    async fn charge(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    async fn refund(&mut self) -> Result<(), StepError> {
        match self.fail.as_deref() {
            Some("refund") => Err(StepError::permanent("the card was closed")),
            Some("refund-later") => Err(StepError::transient("payments unavailable")),
            _ => Ok(()),
        }
    }

    #[step(compensate = cancel_pickup, await_event = "PickedUp", await_timeout_secs = 3600)]
    async fn book_courier(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    async fn cancel_pickup(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[step]
    async fn ship(&mut self) -> Result<(), StepError> {
        if self.fail.is_some() {
            return Err(StepError::permanent("undeliverable address"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    total: i64,
}

#[derive(Debug, Clone, DomainEvent)]
#[event(schema = false)]
enum OrderEvent {
    Placed(Placed),
}

/// Orders per stream, in a table of the database.
#[derive(Clone)]
struct OrderTotals;

#[dtx::projection(name = "order_totals")]
impl OrderTotals {
    async fn placed(
        &self,
        event: &Placed,
        meta: &RecordedEvent,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), dtx::Error> {
        sqlx::query(
            "INSERT INTO order_totals (stream, total) VALUES ($1, $2)
             ON CONFLICT (stream) DO UPDATE SET total = order_totals.total + $2",
        )
        .bind(meta.stream_id.as_str())
        .bind(event.total)
        .execute(dtx_postgres::PgUnitOfWork::connection_of(uow).await?)
        .await
        .map_err(dtx::Error::storage)?;
        Ok(())
    }

    #[clear]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), dtx::Error> {
        sqlx::query("DELETE FROM order_totals")
            .execute(dtx_postgres::PgUnitOfWork::connection_of(uow).await?)
            .await
            .map_err(dtx::Error::storage)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A new, empty database (not migrated): its URL.
async fn empty_database() -> String {
    let base = dtx_postgres::testing::database_url();
    let name = format!("dtx_test_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (server, _) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = server.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// A new, migrated database: its URL and a pool.
async fn migrated_database() -> (String, PgPool) {
    let url = empty_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    dtx_postgres::migrate(&pool).await.unwrap();
    (url, pool)
}

/// What a run of the binary printed, and its exit status.
struct Run {
    stdout: String,
    stderr: String,
    code: i32,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `dtx args` on `url` (no colour, as on a pipe).
fn dtx(url: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dtx"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DTX_SCHEMA")
        .env("NO_COLOR", "1")
        .env("USER", "oncall");
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().expect("the dtx binary runs");
    Run {
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        code: output.status.code().unwrap_or(-1),
    }
}

/// Runs the commands linked into this test binary (its saga and projection registered).
async fn linked(url: &str, args: &[&str]) -> (Result<Outcome, dtx_cli::CliError>, String) {
    let mut argv = vec!["dtx", "--database-url", url, "--color", "never"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    let operator = Operator::new().projections(|db| {
        ProjectionRunner::new(db.events(), db.checkpoints()).projection(OrderTotals)
    });
    let mut out = Vec::new();
    let result = operator.execute(cli, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

/// Snapshot settings that replace what changes between runs: ids, times, ages, positions,
/// process ids and transaction ids; and table padding, which follows their widths.
fn normalised() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    for (pattern, replacement) in [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[uuid]",
        ),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", "[time]"),
        (r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z", "[time]"),
        (r"\b\d+(ms|s|m\d\ds|h\d\dm|d\d\dh)\b", "[age]"),
        (r"\b\d+/\d+\b", "[position]"),
        (r"pid \d+", "pid [pid]"),
        (r"horizon xid \d+", "horizon xid [xid]"),
        (r"head position \d+", "head position [n]"),
        (r", client [0-9a-f.:]+", ""),
        (r"message \d+", "message [id]"),
        (r"dtx_test_[0-9a-f]+", "[database]"),
        (r"(─|═)+", "$1"),
        (r" {2,}(┆|│)", " $1"),
        (r"(┆|│) {2,}", "$1 "),
    ] {
        settings.add_filter(pattern, replacement);
    }
    settings
}

// ---------------------------------------------------------------------------------------------
// Help.

#[test]
fn help_of_every_command() {
    let commands: &[&[&str]] = &[
        &[],
        &["migrate"],
        &["migrate", "status"],
        &["migrate", "run"],
        &["status"],
        &["saga"],
        &["saga", "list"],
        &["saga", "show"],
        &["saga", "retry"],
        &["saga", "cancel"],
        &["saga", "graph"],
        &["outbox"],
        &["outbox", "dead"],
        &["outbox", "requeue"],
        &["outbox", "purge"],
        &["projection"],
        &["projection", "list"],
        &["projection", "reset"],
        &["projection", "skip"],
        &["projection", "resume"],
        &["projection", "rebuild"],
        &["events"],
        &["events", "show"],
        &["events", "tail"],
        &["inbox"],
        &["inbox", "dead"],
        &["inbox", "requeue"],
        &["inbox", "discard"],
        &["feed"],
        &["feed", "check"],
        &["feed", "repair"],
        &["purge"],
        &["stream"],
        &["stream", "show"],
        &["stream", "close"],
        &["stream", "archive"],
        &["forget"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = dtx(None, &args).ok();
        let name = if command.is_empty() {
            "help".to_owned()
        } else {
            format!("help_{}", command.join("_"))
        };
        insta::assert_snapshot!(name, run.stdout);
    }
}

#[test]
fn without_a_database_it_says_how_to_name_one() {
    let run = dtx(None, &["status"]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.trim(),
        "error: no database: pass --database-url or set DATABASE_URL"
    );
    // The standalone binary registers no saga of its own. (Built in this workspace, `dtx` has
    // its `testing` feature on, whose contract suite declares fixture sagas `Contract*`.)
    let run = dtx(None, &["saga", "graph"]).ok();
    let only_fixtures = run
        .stdout
        .trim()
        .strip_prefix("the registered sagas: ")
        .is_some_and(|names| names.split(", ").all(|name| name.starts_with("Contract")));
    assert!(
        run.stdout.contains("no saga is registered") || only_fixtures,
        "{}",
        run.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Migrations.

#[tokio::test]
async fn migrate_is_idempotent() {
    let url = empty_database().await;
    let status = dtx(Some(&url), &["migrate", "status", "--json"])
        .ok()
        .json();
    let migrations = status.as_array().unwrap();
    assert!(!migrations.is_empty());
    assert!(
        migrations.iter().all(|m| m["applied_at"].is_null()),
        "all pending first"
    );

    let first = dtx(Some(&url), &["migrate", "run"]).ok();
    assert_eq!(
        first.stdout.lines().count(),
        migrations.len(),
        "{}",
        first.stdout
    );
    assert!(first.stdout.lines().all(|l| l.starts_with("applied ")));
    let again = dtx(Some(&url), &["migrate", "run"]).ok();
    insta::assert_snapshot!("migrate_run_again", again.stdout);

    let status = dtx(Some(&url), &["migrate", "status", "--json"])
        .ok()
        .json();
    for migration in status.as_array().unwrap() {
        assert!(migration["applied_at"].is_string(), "{migration}");
        assert_eq!(migration["changed"], false);
        assert_eq!(migration["known"], true);
    }
    let table = dtx(Some(&url), &["migrate", "status"]).ok();
    assert!(
        table.stdout.ends_with("every migration is applied\n"),
        "{}",
        table.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// A transaction held open.

#[tokio::test]
async fn status_fails_while_a_transaction_holds_the_feed_and_passes_after() {
    let (url, pool) = migrated_database().await;
    let events = PgEventStore::new(pool.clone());
    let stream = StreamId::new("Order-held").unwrap();
    let placed = NewEvent::encode(
        &stream,
        &OrderEvent::Placed(Placed { total: 5 }),
        dtx::EventMetadata::default(),
    )
    .unwrap();

    // A transaction with an id, left open: the feed's horizon stops at it.
    let mut held = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .unwrap();
    // An event committed after it: readers wait for the held transaction.
    events
        .append(&stream, ExpectedVersion::NoStream, vec![placed])
        .await
        .unwrap();
    let mine_started: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT xact_start FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&pool)
            .await
            .unwrap();

    let limit = ["status", "--max-transaction-age", "0s"];
    let run = dtx(Some(&url), &limit);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("needs a person"), "{}", run.stdout);
    let mut args = limit.to_vec();
    args.push("--json");
    let run = dtx(Some(&url), &args);
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["healthy"], false);
    let holder = &report["report"]["feed"]["oldest_transaction"];
    let problem = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["area"] == "feed")
        .expect("a feed problem");
    if holder["pid"] == pid {
        // The usual case: ours is the oldest transaction of the cluster.
        assert_eq!(problem["subject"], format!("pid {pid}"));
        assert_eq!(holder["state"], "idle in transaction");
        assert_eq!(holder["query"], "SELECT pg_current_xact_id()");
        assert!(report["report"]["feed"]["waiting"].as_u64().unwrap() >= 1);
        let text = dtx(Some(&url), &limit);
        normalised().bind(|| insta::assert_snapshot!("status_transaction_held", text.stdout));
    } else {
        // Another test's transaction on the shared server began before ours: it is named.
        let age = holder["age"].as_f64().unwrap();
        let ours = (chrono::Utc::now() - mine_started).as_seconds_f64();
        assert!(
            age + 1.0 >= ours,
            "the named transaction is older than ours: {holder}"
        );
    }

    held.commit().await.unwrap();
    let run = dtx(
        Some(&url),
        &["status", "--max-transaction-age", "1m", "--json"],
    );
    let report = run.json();
    if run.code != 0 {
        // Only another process's transaction, older than a minute, may still be named.
        for problem in report["problems"].as_array().unwrap() {
            assert_eq!(problem["area"], "feed", "{problem}");
            assert_ne!(problem["subject"], format!("pid {pid}"), "{problem}");
        }
    } else {
        assert_eq!(report["healthy"], true);
        assert_eq!(report["report"]["feed"]["waiting"], 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Sagas in every state, an outbox dead letter, projections lagging and failed, an inbox dead
// letter.

struct Seeded {
    url: String,
    pool: PgPool,
    sagas: SagaOrchestrator,
    worker: dtx::saga::SagaWorker,
    completed: Uuid,
    waiting: Uuid,
    compensating: Uuid,
    compensated: Uuid,
    failed: Uuid,
    running: Uuid,
    dead_letter: Uuid,
}

async fn seed() -> Seeded {
    let (url, pool) = migrated_database().await;
    sqlx::query("CREATE TABLE order_totals (stream TEXT PRIMARY KEY, total BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let store = PgSagaStore::new(pool.clone());
    let sagas = SagaOrchestrator::builder(Arc::new(store.clone()))
        .registry()
        // A failed compensation's retry stays far away: the saga stays compensating.
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build()
        .unwrap();
    let worker = sagas.worker(WorkerOptions::default());
    let start = |fail: Option<&str>| {
        let sagas = sagas.clone();
        let fail = fail.map(str::to_owned);
        async move { sagas.start(Shipment { fail }).await.unwrap() }
    };
    let completed = start(None).await;
    let waiting = start(None).await;
    let compensating = start(Some("refund-later")).await;
    let compensated = start(Some("ship")).await;
    let failed = start(Some("refund")).await;
    worker.run_until_idle().await.unwrap();
    let picked_up = || SagaEvent::new("PickedUp", &serde_json::json!({"courier": "C-7"})).unwrap();
    for id in [completed, compensating, compensated, failed] {
        sagas.handle_event(id, picked_up()).await.unwrap();
    }
    worker.run_until_idle().await.unwrap();
    // Started, and claimed by a worker that died at once: its lease has expired.
    let running = start(None).await;
    store
        .claim("worker-that-died", chrono::Utc::now(), Duration::ZERO, 10)
        .await
        .unwrap();
    for (id, status) in [
        (completed, SagaStatus::Completed),
        (waiting, SagaStatus::Waiting),
        (compensating, SagaStatus::Compensating),
        (compensated, SagaStatus::Compensated),
        (failed, SagaStatus::Failed),
        (running, SagaStatus::Running),
    ] {
        let saga = sagas.status(id).await.unwrap();
        assert_eq!(saga.status, status, "{id}: {:?}", saga.last_error);
    }

    // Events, put in the outbox by the append; the broker rejects one stream's.
    let events = PgEventStore::new(pool.clone()).with_outbox(true);
    for (n, stream) in ["Order-1", "Order-2", "Order-poison"]
        .into_iter()
        .enumerate()
    {
        let stream = StreamId::new(stream).unwrap();
        let total = i64::try_from(n).unwrap() * 10 + 5;
        let event = NewEvent::encode(
            &stream,
            &OrderEvent::Placed(Placed { total }),
            dtx::EventMetadata::default(),
        )
        .unwrap();
        events
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
    }
    let publisher = MemoryPublisher::new();
    publisher.reject_key("Order-poison");
    let relay = PgOutbox::new(pool.clone()).relay(
        publisher.clone(),
        RelayOptions {
            max_retries: 0,
            ..RelayOptions::default()
        },
    );
    relay.run_until_idle().await.unwrap();
    assert_eq!(publisher.count(), 2);

    // A projection that has not run since the events (lagging), and one that failed.
    let checkpoints = PgCheckpointStore::new(pool.clone());
    let owner = Uuid::now_v7();
    let lagging = CheckpointKey::new("order_totals", 1);
    checkpoints
        .acquire(&lagging, owner, Duration::from_secs(1))
        .await
        .unwrap();
    checkpoints.release(&lagging, owner).await.unwrap();
    let broken = CheckpointKey::new("invoices", 2);
    checkpoints
        .acquire(&broken, owner, Duration::from_secs(60))
        .await
        .unwrap();
    let first = events.read_all(GlobalPosition::START, 1).await.unwrap();
    checkpoints
        .fail(
            &broken,
            owner,
            &Failure::of(&first[0], "no tax rate for region EU-XX".into(), 5),
        )
        .await
        .unwrap();
    checkpoints.release(&broken, owner).await.unwrap();

    // A consumer's dead letter.
    let inbox = PgInbox::new(pool.clone());
    let dead_letter = Uuid::now_v7();
    let mut uow = inbox.begin().await.unwrap();
    let message = InboundMessage {
        message_id: dead_letter,
        event_type: "PaymentCaptured".into(),
        schema_version: Some(1),
        key: Some("Payment-9".into()),
        correlation_id: None,
        causation_id: None,
        traceparent: None,
        headers: std::collections::BTreeMap::default(),
        payload: br#"{"amount": -1}"#.to_vec(),
        source: Some("payments/0@41".into()),
        delivery: 3,
    };
    inbox
        .dead_letter_in(&mut *uow, "billing", &message, "negative amount", 3)
        .await
        .unwrap();
    uow.commit_boxed().await.unwrap();

    Seeded {
        url,
        pool,
        sagas,
        worker,
        completed,
        waiting,
        compensating,
        compensated,
        failed,
        running,
        dead_letter,
    }
}

#[tokio::test]
async fn status_names_every_problem() {
    let s = seed().await;
    let args = [
        "status",
        "--max-projection-lag",
        "2",
        "--max-lease-expired",
        "0s",
        "--max-transaction-age",
        "1h",
    ];
    let run = dtx(Some(&s.url), &args);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    normalised().bind(|| insta::assert_snapshot!("status_problems", run.stdout));

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = dtx(Some(&s.url), &json_args);
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["healthy"], false);
    let problems: Vec<(String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["area"].as_str().unwrap().to_owned(),
                p["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let named = |area: &str, subject: &str| problems.iter().any(|p| p.0 == area && p.1 == subject);
    let dead_id = report["report"]["outbox"]["first_dead"][0]["id"]
        .as_i64()
        .unwrap();
    assert!(
        named("outbox", &format!("message {dead_id}")),
        "{problems:?}"
    );
    assert!(
        named("sagas", &format!("Shipment {}", s.failed)),
        "{problems:?}"
    );
    assert!(
        named("sagas", &format!("Shipment {}", s.running)),
        "expired lease: {problems:?}"
    );
    assert!(named("projections", "order_totals v1"), "{problems:?}");
    assert!(named("projections", "invoices v2"), "{problems:?}");
    assert!(named("inbox", "billing"), "{problems:?}");
    let counts = &report["report"]["sagas"]["counts"];
    for status in [
        "running",
        "waiting",
        "compensating",
        "completed",
        "compensated",
        "failed",
    ] {
        assert_eq!(counts[status], 1, "{status}: {counts}");
    }
    assert_eq!(report["report"]["outbox"]["dead"], 1);
    assert_eq!(report["report"]["inbox"]["dead"], 1);
    let lagging = report["report"]["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"]["name"] == "order_totals")
        .unwrap();
    assert_eq!(lagging["lag"], 3);

    // Listings, as tables and as JSON.
    let all = dtx(
        Some(&s.url),
        &[
            "saga",
            "list",
            "--status",
            "running",
            "--status",
            "waiting",
            "--status",
            "compensating",
            "--status",
            "completed",
            "--status",
            "compensated",
            "--status",
            "failed",
            "--json",
        ],
    )
    .ok()
    .json();
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 6, "{listed:?}");
    for status in [
        "running",
        "waiting",
        "compensating",
        "completed",
        "compensated",
        "failed",
    ] {
        assert!(listed.contains(&status), "{listed:?}");
    }
    let unfinished = dtx(Some(&s.url), &["saga", "list"]).ok();
    normalised().bind(|| insta::assert_snapshot!("saga_list", unfinished.stdout));

    let dead = dtx(Some(&s.url), &["outbox", "dead", "--json"]).ok().json();
    assert_eq!(dead[0]["key"], "Order-poison");
    assert_eq!(dead[0]["payload"]["total"], 25);
    let dead = dtx(Some(&s.url), &["outbox", "dead"]).ok();
    normalised().bind(|| insta::assert_snapshot!("outbox_dead", dead.stdout));

    let projections = dtx(Some(&s.url), &["projection", "list", "--json"])
        .ok()
        .json();
    assert_eq!(projections.as_array().unwrap().len(), 2);
    // The standalone binary registers no projection.
    assert!(
        projections
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["registered"] == false)
    );
    let projections = dtx(Some(&s.url), &["projection", "list"]).ok();
    normalised().bind(|| insta::assert_snapshot!("projection_list", projections.stdout));

    let inbox = dtx(Some(&s.url), &["inbox", "dead", "--json"]).ok().json();
    assert_eq!(inbox[0]["message"]["message_id"], s.dead_letter.to_string());
    assert_eq!(inbox[0]["error"], "negative amount");
    let inbox = dtx(Some(&s.url), &["inbox", "dead"]).ok();
    normalised().bind(|| insta::assert_snapshot!("inbox_dead", inbox.stdout));

    let shown = dtx(Some(&s.url), &["events", "show", "Order-1", "--metadata"]).ok();
    normalised().bind(|| insta::assert_snapshot!("events_show", shown.stdout));
    let tail = dtx(Some(&s.url), &["events", "tail", "--last", "2", "--json"]).ok();
    let tailed: Vec<Value> = tail
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        tailed
            .iter()
            .map(|e| e["stream"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Order-2", "Order-poison"]
    );
    let unknown = dtx(Some(&s.url), &["events", "show", "Order-404"]);
    assert_eq!(
        (unknown.code, unknown.stderr.trim()),
        (2, "error: no stream `Order-404`")
    );
}

#[tokio::test]
async fn saga_show_draws_the_timeline() {
    let s = seed().await;
    for (name, id) in [
        ("saga_show_completed", s.completed),
        ("saga_show_waiting", s.waiting),
        ("saga_show_compensating", s.compensating),
        ("saga_show_compensated", s.compensated),
        ("saga_show_failed", s.failed),
        ("saga_show_running", s.running),
    ] {
        // Linked: the registered saga names the steps still to come.
        let (result, out) = linked(&s.url, &["saga", "show", &id.to_string()]).await;
        assert_eq!(result.unwrap(), Outcome::Ok);
        normalised().bind(|| insta::assert_snapshot!(name, out));
    }
    let shown = dtx(
        Some(&s.url),
        &["saga", "show", &s.failed.to_string(), "--json"],
    )
    .ok()
    .json();
    assert_eq!(shown["status"], "failed");
    let kinds: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step",
            "step",
            "step",
            "compensation started",
            "undone",
            "undo failed"
        ]
    );
    let missing = dtx(Some(&s.url), &["saga", "show", &Uuid::nil().to_string()]);
    assert_eq!(missing.code, 2);
    assert_eq!(
        missing.stderr.trim(),
        format!("error: no saga {}", Uuid::nil())
    );
}

#[tokio::test]
async fn saga_cancel_compensates_and_retry_compensates_again() {
    let s = seed().await;
    let cancel = dtx(
        Some(&s.url),
        &[
            "saga",
            "cancel",
            &s.waiting.to_string(),
            "--reason",
            "customer withdrew",
        ],
    )
    .ok();
    assert_eq!(
        cancel.stdout.trim(),
        format!(
            "saga {} cancelled by oncall: a worker compensates its completed steps now",
            s.waiting
        )
    );
    s.worker.run_until_idle().await.unwrap();
    let saga = s.sagas.status(s.waiting).await.unwrap();
    assert_eq!(
        saga.status,
        SagaStatus::Compensated,
        "{:?}",
        saga.last_error
    );
    assert!(saga.completed.iter().all(|c| c.compensated));
    let decision = saga.cancellation().unwrap();
    assert_eq!(
        (decision.by.as_str(), decision.reason.as_str()),
        ("oncall", "customer withdrew")
    );
    let (_, shown) = linked(&s.url, &["saga", "show", &s.waiting.to_string()]).await;
    normalised().bind(|| insta::assert_snapshot!("saga_show_cancelled", shown));

    // A finished saga cannot be cancelled.
    let again = dtx(
        Some(&s.url),
        &["saga", "cancel", &s.completed.to_string(), "--reason", "x"],
    );
    assert_eq!(again.code, 2);
    assert_eq!(
        again.stderr.trim(),
        format!(
            "error: saga {} is completed: only a running or waiting saga can be cancelled",
            s.completed
        )
    );

    // Retry of a failed saga: it compensates again.
    dtx(Some(&s.url), &["saga", "retry", &s.failed.to_string()]).ok();
    assert_eq!(
        s.sagas.status(s.failed).await.unwrap().status,
        SagaStatus::Compensating
    );
    let not_failed = dtx(Some(&s.url), &["saga", "retry", &s.completed.to_string()]);
    assert_eq!(not_failed.code, 2);
}

#[tokio::test]
async fn requeue_republishes_and_skip_resumes() {
    let s = seed().await;
    let dead = dtx(Some(&s.url), &["outbox", "dead", "--json"]).ok().json();
    let id = dead[0]["id"].as_i64().unwrap();
    let run = dtx(Some(&s.url), &["outbox", "requeue", &id.to_string()]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!("message {id} is pending again: its key resumes, in order")
    );
    let publisher = MemoryPublisher::new();
    PgOutbox::new(s.pool.clone())
        .relay(publisher.clone(), RelayOptions::default())
        .run_until_idle()
        .await
        .unwrap();
    let published = publisher.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].key, "Order-poison");
    assert!(
        dtx(Some(&s.url), &["outbox", "dead", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let none = dtx(Some(&s.url), &["outbox", "requeue", &id.to_string()]);
    assert_eq!(none.code, 2);

    let run = dtx(
        Some(&s.url),
        &[
            "projection",
            "skip",
            "invoices",
            "--reason",
            "region fixed by hand",
        ],
    )
    .ok();
    assert!(
        run.stdout.starts_with("invoices v2 skipped the event at "),
        "{}",
        run.stdout
    );
    let projections = dtx(Some(&s.url), &["projection", "list", "--json"])
        .ok()
        .json();
    assert!(
        projections
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"] == "running")
    );

    let run = dtx(
        Some(&s.url),
        &["inbox", "requeue", "billing", &s.dead_letter.to_string()],
    )
    .ok();
    assert!(run.stdout.contains("requeued"), "{}", run.stdout);
    let inbox = dtx(Some(&s.url), &["inbox", "dead", "--json"]).ok().json();
    assert_eq!(inbox[0]["status"], "requeued");

    // The standalone binary cannot clear a read model; the linked one rebuilds it.
    let refused = dtx(Some(&s.url), &["projection", "reset", "order_totals"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("--checkpoint-only"),
        "{}",
        refused.stderr
    );
    let (result, out) = linked(&s.url, &["projection", "rebuild", "order_totals"]).await;
    assert_eq!(result.unwrap(), Outcome::Ok, "{out}");
    assert!(
        out.starts_with("order_totals rebuilt: 3 events applied"),
        "{out}"
    );
    let totals: Vec<(String, i64)> =
        sqlx::query_as("SELECT stream, total FROM order_totals ORDER BY stream")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(
        totals,
        [
            ("Order-1".to_owned(), 5),
            ("Order-2".to_owned(), 15),
            ("Order-poison".to_owned(), 25)
        ]
    );
    let (result, out) = linked(&s.url, &["projection", "rebuild", "order_totals"]).await;
    assert_eq!(result.unwrap(), Outcome::Ok, "{out}");
    let twice: i64 = sqlx::query_scalar("SELECT sum(total)::int8 FROM order_totals")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(twice, 45, "a rebuild clears the read model first");
    let projections = dtx(Some(&s.url), &["projection", "list", "--json"])
        .ok()
        .json();
    let totals = projections
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"]["name"] == "order_totals")
        .unwrap();
    assert_eq!(totals["lag"], 0);
}

/// `feed check` finds a feed whose order is ahead of the transaction ids (as a logical restore
/// into another cluster leaves it: simulated here by raising the stored order), exits 1 until
/// `feed repair` re-bases it, and new events then sort after the old ones.
#[tokio::test]
async fn feed_check_finds_a_restored_feed_and_repair_rebases_it() {
    let (url, pool) = migrated_database().await;
    let stream = StreamId::new("Order-restored").unwrap();
    let event = || NewEvent::from_json("Placed", &serde_json::json!({})).unwrap();
    PgEventStore::new(pool.clone())
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event(), event(), event()],
        )
        .await
        .unwrap();
    let healthy = dtx(Some(&url), &["feed", "check", "--json"]).ok().json();
    assert_eq!(healthy["ahead"], false);

    sqlx::query("UPDATE event_store SET commit_order = commit_order + 1000000000000")
        .execute(&pool)
        .await
        .unwrap();
    let ahead = dtx(Some(&url), &["feed", "check", "--json"]);
    assert_eq!(ahead.code, 1, "{}", ahead.stderr);
    let ahead = ahead.json();
    assert_eq!(ahead["ahead"], true);
    assert!(ahead["stored"].as_u64().unwrap() > ahead["next_xid"].as_u64().unwrap());
    let said = dtx(Some(&url), &["feed", "check"]);
    assert_eq!(said.code, 1);
    assert!(said.stdout.contains("`dtx feed repair`"), "{}", said.stdout);

    let repair = dtx(Some(&url), &["feed", "repair", "--json"]).ok().json();
    assert_eq!(repair["repaired"], true, "{repair}");
    assert_eq!(repair["events"], 3, "{repair}");
    assert_eq!(
        dtx(Some(&url), &["feed", "check", "--json"]).ok().json()["ahead"],
        false
    );
    let again = dtx(Some(&url), &["feed", "repair"]).ok();
    assert_eq!(
        again.stdout.trim(),
        "the feed is not ahead: nothing changed"
    );

    // A new event sorts after the re-based ones.
    PgEventStore::new(pool.clone())
        .append(&stream, ExpectedVersion::Exact(3), vec![event()])
        .await
        .unwrap();
    let last: i64 = sqlx::query_scalar(
        "SELECT version FROM event_store ORDER BY commit_order DESC, global_position DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last, 4);
}

#[tokio::test]
async fn forget_deletes_the_subjects_key() {
    let (url, pool) = migrated_database().await;
    let stream = StreamId::new("Customer-7").unwrap();
    let event = NewEvent::from_json(
        "Registered",
        &serde_json::json!({ "name": { "dtx:personal": "customer-7", "value": "Ada" } }),
    )
    .unwrap();
    let store = PgEventStore::new(pool.clone());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let name = async || {
        let events = store.read_stream(&stream, 1, 1).await.unwrap();
        let data: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        data["name"].clone()
    };
    assert_eq!(name().await["value"], "Ada");

    let forgot = dtx(Some(&url), &["forget", "customer-7", "--json"])
        .ok()
        .json();
    assert_eq!(
        forgot,
        serde_json::json!({ "subject": "customer-7", "forgotten": true })
    );
    assert_eq!(name().await["forgotten"], true);
    let again = dtx(Some(&url), &["forget", "customer-7"]).ok();
    assert_eq!(
        again.stdout.trim(),
        "`customer-7` has no key: nothing was stored about it, or it was forgotten before"
    );
}

#[tokio::test]
async fn saga_graph_of_a_registered_saga() {
    let url = "postgres://unused@127.0.0.1:1/none";
    for (name, format) in [("saga_graph_mermaid", "mermaid"), ("saga_graph_dot", "dot")] {
        let (result, out) = linked(url, &["saga", "graph", "Shipment", "--format", format]).await;
        assert_eq!(result.unwrap(), Outcome::Ok);
        insta::assert_snapshot!(name, out);
    }
    let (result, _) = linked(url, &["saga", "graph", "Nope"]).await;
    // The names besides `Shipment` are `dtx`'s contract fixtures, registered when this workspace
    // builds `dtx` with its `testing` feature.
    let error = result.unwrap_err().to_string();
    let names = error
        .strip_prefix("no saga named `Nope`; the registered sagas: ")
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        names
            .split(", ")
            .all(|name| name == "Shipment" || name.starts_with("Contract"))
            && names.split(", ").any(|name| name == "Shipment"),
        "{error}"
    );
}

/// `dtx purge`: a dry run counts the due rows of every kind and deletes nothing; the purge
/// deletes exactly those; `--older-than` and `--failed-sagas` widen it; `--json` parses.
#[tokio::test]
async fn purge_deletes_what_is_due() {
    let (url, pool) = migrated_database().await;
    sqlx::raw_sql(
        "INSERT INTO saga_state (id, name, status, data, next_run_at, created_at, updated_at)
         SELECT gen_random_uuid(), 'Seed', s, '{}', now(), now() - d * interval '1 day',
                now() - d * interval '1 day'
         FROM (VALUES ('completed', 40), ('completed', 1), ('compensated', 40),
                      ('failed', 40), ('running', 40)) AS v(s, d);
         INSERT INTO outbox_published (stream_key, id, attempts, created_at, published_at)
         VALUES ('k', 1, 1, now() - interval '10 days', now() - interval '10 days'),
                ('k', 2, 1, now(), now());
         INSERT INTO inbox_messages (consumer, message_id, message_type, received_at)
         VALUES ('c', gen_random_uuid(), 'T', now() - interval '20 days'),
                ('c', gen_random_uuid(), 'T', now());
         INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, status, response,
                                       created_at, expires_at)
         VALUES ('s', 'old', decode(repeat('ab', 32), 'hex'), 'completed', '\\x01',
                 now() - interval '2 days', now() - interval '1 day'),
                ('s', 'live', decode(repeat('ab', 32), 'hex'), 'completed', '\\x01',
                 now(), now() + interval '1 day');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let count = async |table: &str| -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    let dry = dtx(Some(&url), &["purge", "--dry-run"]).ok();
    insta::assert_snapshot!("purge_dry_run", dry.stdout);
    assert_eq!(count("saga_state").await, 5, "a dry run deletes nothing");

    let json = dtx(Some(&url), &["purge", "--batch", "1", "--json"])
        .ok()
        .json();
    assert_eq!(json["dry_run"], false);
    assert_eq!(json["total"], 5);
    assert_eq!(json["rows"]["finished_sagas"], 2);
    assert_eq!(json["rows"]["idempotency_keys"], 1);
    assert_eq!(count("saga_state").await, 3);
    assert_eq!(count("outbox_published").await, 1);
    assert_eq!(count("inbox_messages").await, 1);
    assert_eq!(count("idempotency_keys").await, 1);

    let wide = dtx(
        Some(&url),
        &["purge", "--older-than", "1h", "--failed-sagas", "30d"],
    )
    .ok();
    insta::assert_snapshot!("purge_older_than", wide.stdout);
    let left: Vec<String> = sqlx::query_scalar("SELECT status FROM saga_state")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["running"]);
}

/// `dtx stream show|close|archive`: the state, the close (later appends refused), the archive.
#[tokio::test]
async fn stream_close_and_archive() {
    let (url, pool) = migrated_database().await;
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new("Order-7").unwrap();
    let placed = || {
        NewEvent::encode(
            &stream,
            &OrderEvent::Placed(Placed { total: 5 }),
            dtx::EventMetadata::default(),
        )
        .unwrap()
    };
    store
        .append(&stream, ExpectedVersion::NoStream, vec![placed(), placed()])
        .await
        .unwrap();
    let open = dtx(Some(&url), &["stream", "show", "Order-7"]).ok();
    assert_eq!(open.stdout.trim(), "Order-7: open at version 2");
    let refused = dtx(Some(&url), &["stream", "archive", "Order-7"]);
    assert_eq!(refused.code, 2);
    assert_eq!(
        refused.stderr.trim(),
        "error: cannot archive stream `Order-7`: it is not closed; close it first"
    );
    let closed = dtx(Some(&url), &["stream", "close", "Order-7"]).ok();
    assert_eq!(
        closed.stdout.trim(),
        "Order-7 is closed at version 2: appends to it are refused"
    );
    assert!(matches!(
        store
            .append(&stream, ExpectedVersion::Exact(2), vec![placed()])
            .await,
        Err(dtx::Error::StreamClosed { .. })
    ));
    let archived = dtx(Some(&url), &["stream", "archive", "Order-7"]).ok();
    assert_eq!(
        archived.stdout.trim(),
        "Order-7 is archived: 2 events moved to the archive"
    );
    let json = dtx(Some(&url), &["stream", "show", "Order-7", "--json"])
        .ok()
        .json();
    assert_eq!(
        json,
        serde_json::json!({"stream": "Order-7", "state": {"state": "archived", "version": 2}})
    );
    let both = dtx(Some(&url), &["stream", "archive", "--close", "Order-8"]).ok();
    assert_eq!(
        both.stdout.trim(),
        "Order-8 is archived: 0 events moved to the archive"
    );
}

//! Connections to PostgreSQL cut before, during and after the commits of every component,
//! through [`tests::fault_proxy`]; then cut at random every 100–200 ms while appends, a relay
//! and saga workers run at once. Nothing acknowledged is lost, nothing is stored or run twice
//! that promised once, nothing stays stuck.
//!
//! No assertion depends on timing: each test waits for the state it expects (with a deadline of
//! minutes, for a loaded machine), never for something to happen within a short time.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::UnitOfWork as _;
use dtx::idempotency::{
    Claim, ClaimRequest, Fingerprint, IdempotencyKey, IdempotencyPolicy, IdempotencyStatus,
    IdempotencyStore, Scope,
};
use dtx::outbox::{MemoryPublisher, OutboxMessage, RelayOptions};
use dtx::saga::{Saga, SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions};
use dtx::{Error, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{PgEventStore, PgIdempotencyStore, PgOutbox, PgSagaStore, PgUnitOfWork};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::fault_proxy::{Cut, Fault, FaultProxy, Statement};
use uuid::Uuid;

/// How long a test waits for the state it expects before it fails.
const DEADLINE: Duration = Duration::from_mins(3);

const CUTS: [Cut; 3] = [Cut::Before, Cut::During, Cut::After];

fn fault(cut: Cut, statement: Statement) -> Fault {
    Fault {
        cut,
        statement,
        nth: 1,
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Happened", &serde_json::json!({ "n": n })).unwrap()
}

/// Polls `check` until it returns `Some`, for at most [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every fault armed on `proxy` has cut its connection.
async fn fired(proxy: &FaultProxy) {
    tokio::time::timeout(DEADLINE, proxy.fired())
        .await
        .unwrap_or_else(|_| panic!("{} armed faults never fired", proxy.pending()));
}

async fn event_ids(store: &PgEventStore, stream: &StreamId) -> Vec<Uuid> {
    let events = store.read_stream(stream, 1, 10_000).await.unwrap();
    events.iter().map(|e| e.event_id).collect()
}

/// `PgEventStore::append` cut before its statement reaches the server, after it committed but
/// before the answer arrives, and right after the answer: a lost answer is
/// `OutcomeUnknown` (never a success, never "nothing written"), an acknowledged append is
/// stored, and the caller's retry of the same events is one success that stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_cut_before_during_and_after_its_commit() {
    let direct = tests::pg_store().await;
    let proxy = FaultProxy::in_front_of(direct.pool()).await.unwrap();
    let proxied = PgEventStore::new(proxy.pool(1).await.unwrap());
    for cut in CUTS {
        let stream = StreamId::new(format!("Append-{cut:?}")).unwrap();
        let batch: Vec<NewEvent> = (1..=3).map(event).collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        proxy.arm(fault(cut, Statement::containing("INSERT INTO event_store")));
        let first = proxied
            .append(&stream, ExpectedVersion::NoStream, batch.clone())
            .await;
        fired(&proxy).await;
        let stored = direct.stream_version(&stream).await.unwrap();
        match cut {
            Cut::Before | Cut::During => {
                assert!(
                    matches!(&first, Err(Error::OutcomeUnknown { stream: s, .. }) if *s == stream),
                    "{cut:?}: {first:?}"
                );
                let expected = if cut == Cut::Before { 0 } else { 3 };
                assert_eq!(stored, expected, "{cut:?}: what the server holds");
            }
            Cut::After => {
                let first = first.unwrap();
                assert!(!first.deduplicated);
                assert_eq!(stored, 3, "an acknowledged append is stored");
            }
        }
        // The caller retries the same events (the only thing it may do after OutcomeUnknown).
        let retry = proxied
            .append(&stream, ExpectedVersion::NoStream, batch)
            .await
            .unwrap();
        assert_eq!(retry.deduplicated, cut != Cut::Before, "{cut:?}");
        assert_eq!((retry.first_version, retry.last_version), (1, 3));
        assert_eq!(
            event_ids(&direct, &stream).await,
            ids,
            "{cut:?}: each event once"
        );
    }
    let counts = proxy.counts();
    assert_eq!(counts.faults, 3);
    eprintln!(
        "append faults: {} cuts injected (before, during, after the commit), 3 appends acknowledged, 0 lost, 0 duplicated",
        counts.faults
    );
}

/// A unit of work: the caller's own row, the order's events, the commit.
async fn place_order(
    pool: &PgPool,
    store: &PgEventStore,
    stream: &StreamId,
    batch: Vec<NewEvent>,
) -> dtx::Result<dtx::AppendResult> {
    let mut uow = PgUnitOfWork::begin(pool).await?;
    sqlx::query("INSERT INTO uow_orders (stream) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(stream.as_str())
        .execute(uow.connection())
        .await
        .map_err(Error::storage)?;
    let appended = store
        .append_in(&mut uow, stream, ExpectedVersion::NoStream, batch)
        .await?;
    uow.commit().await?;
    Ok(appended)
}

/// The caller's own SQL, the events (`append_in`) and the commit of a `PgUnitOfWork`, with the
/// connection cut before, during and after `COMMIT`: a commit whose answer is lost is reported
/// as outcome unknown, never as a success nor as "nothing written"; the caller's retry of the
/// whole unit of work leaves its writes and events exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_of_work_cut_before_during_and_after_commit() {
    let direct = tests::pg_store().await;
    sqlx::query("CREATE TABLE uow_orders (stream TEXT PRIMARY KEY)")
        .execute(direct.pool())
        .await
        .unwrap();
    let proxy = FaultProxy::in_front_of(direct.pool()).await.unwrap();
    // Two connections: an append in a unit of work that finds its events stored asks the pool
    // (its own transaction is aborted by then), while the unit of work holds one.
    let pool = proxy.pool(2).await.unwrap();
    let proxied = PgEventStore::new(pool.clone());

    let orders = async |stream: &StreamId| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM uow_orders WHERE stream = $1")
            .bind(stream.as_str())
            .fetch_one(direct.pool())
            .await
            .unwrap()
    };
    for cut in CUTS {
        let stream = StreamId::new(format!("Order-{cut:?}")).unwrap();
        let batch: Vec<NewEvent> = (1..=3).map(event).collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        proxy.arm(fault(cut, Statement::Commit));
        let first = place_order(&pool, &proxied, &stream, batch.clone()).await;
        fired(&proxy).await;
        let stored = direct.stream_version(&stream).await.unwrap();
        match cut {
            Cut::Before | Cut::During => {
                assert!(
                    matches!(&first, Err(Error::CommitOutcomeUnknown { .. })),
                    "{cut:?}: a commit without an answer is of unknown outcome: {first:?}"
                );
                let committed = cut == Cut::During;
                assert_eq!(stored, if committed { 3 } else { 0 }, "{cut:?}");
                assert_eq!(orders(&stream).await, i64::from(committed), "{cut:?}");
            }
            Cut::After => {
                assert!(!first.unwrap().deduplicated);
                assert_eq!(stored, 3, "an acknowledged commit is stored");
            }
        }
        // The caller runs the whole unit of work again.
        let retry = place_order(&pool, &proxied, &stream, batch).await.unwrap();
        assert_eq!(retry.deduplicated, cut != Cut::Before, "{cut:?}");
        assert_eq!(event_ids(&direct, &stream).await, ids, "{cut:?}: once");
        assert_eq!(orders(&stream).await, 1, "{cut:?}: the caller's row, once");
    }
    eprintln!(
        "unit of work faults: {} cuts injected at COMMIT (before, during, after), 3 units of work retried, 0 lost, 0 duplicated",
        proxy.counts().faults
    );
}

/// Per key, the published sequences in publish order.
fn by_key(messages: &[OutboxMessage]) -> BTreeMap<String, Vec<u64>> {
    let mut keys: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in messages {
        keys.entry(m.key.clone())
            .or_default()
            .push(m.sequence.unwrap());
    }
    keys
}

/// Checks at-least-once delivery in per-key order of `expected` events per key: no sequence is
/// published before all earlier ones were, and every one was. Returns the redeliveries.
fn check_delivery(published: &[OutboxMessage], expected: &BTreeMap<String, u64>) -> usize {
    let keys = by_key(published);
    let mut redelivered = 0;
    for (key, &last) in expected {
        let sequences = keys.get(key).map(Vec::as_slice).unwrap_or_default();
        let mut seen = 0;
        for &sequence in sequences {
            assert!(
                sequence <= seen + 1,
                "{key}: {sequence} published before {}",
                seen + 1
            );
            seen = seen.max(sequence);
        }
        assert_eq!(seen, last, "{key}: every event published");
        redelivered += sequences.len() - usize::try_from(last).unwrap();
    }
    redelivered
}

/// Whether every expected event was published at least once.
fn all_published(publisher: &MemoryPublisher, expected: &BTreeMap<String, u64>) -> bool {
    let seen: HashSet<(String, u64)> = publisher
        .published()
        .into_iter()
        .map(|m| (m.key, m.sequence.unwrap()))
        .collect();
    let total: u64 = expected.values().sum();
    seen.len() == usize::try_from(total).unwrap()
}

fn fast_relay() -> RelayOptions {
    RelayOptions {
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
        max_retries: 1000,
        ..RelayOptions::default()
    }
}

/// Runs `relay` until `stop` says so, starting it again when it stops on an error (its
/// listener's connection cut while it connected): what a service's supervisor does. Returns
/// how many times it was restarted.
async fn supervise(
    relay: dtx_postgres::OutboxRelay,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let mut restarts = 0;
    while !*stop.borrow() {
        let mut stopped = stop.clone();
        if relay
            .run(async move {
                stopped.wait_for(|s| *s).await.ok();
            })
            .await
            .is_err()
        {
            restarts += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    restarts
}

/// An outbox relay whose connections go through the proxy, its commits cut before, during and
/// after `COMMIT` while events are appended: every event is published at least once, in order
/// per stream, none lost, and the outbox ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_relay_cut_before_during_and_after_its_commits() {
    const STREAMS: u64 = 4;
    const ROUNDS: u64 = 12;
    let direct = tests::pg_store().await.with_outbox(true);
    let proxy = FaultProxy::in_front_of(direct.pool()).await.unwrap();
    let outbox = PgOutbox::new(proxy.pool(4).await.unwrap());
    let publisher = MemoryPublisher::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(supervise(
        outbox.relay(publisher.clone(), fast_relay()),
        stopped,
    ));

    for round in 0..ROUNDS {
        let cut = CUTS[usize::try_from(round).unwrap() % 3];
        proxy.arm(fault(cut, Statement::Commit));
        for s in 0..STREAMS {
            let stream = StreamId::new(format!("Relay-{s}")).unwrap();
            let events = (1..=5).map(|k| event(round * 5 + k)).collect();
            direct
                .append(&stream, ExpectedVersion::Exact(round * 5), events)
                .await
                .unwrap();
        }
        fired(&proxy).await;
    }
    let expected: BTreeMap<String, u64> = (0..STREAMS)
        .map(|s| (format!("Relay-{s}"), ROUNDS * 5))
        .collect();
    eventually("every event published", async || {
        all_published(&publisher, &expected).then_some(())
    })
    .await;
    let direct_outbox = PgOutbox::new(direct.pool().clone());
    eventually("the outbox empty", async || {
        (direct_outbox.counts().await.ok()?.pending == 0).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    let restarts = relay.await.unwrap();
    let deliveries = publisher.published();
    let redelivered = check_delivery(&deliveries, &expected);
    let counts = proxy.counts();
    assert_eq!(counts.faults, ROUNDS);
    eprintln!(
        "outbox relay faults: {} cuts injected at the relay's COMMIT ({} each before, during, after), {} events, {} publishes ({redelivered} redeliveries), 0 lost, per-stream order kept, {restarts} relay restarts",
        counts.faults,
        ROUNDS / 3,
        STREAMS * ROUNDS * 5,
        deliveries.len()
    );
}

/// The pool saga steps record their effects with (steps get it from the orchestrator's state).
#[derive(Clone)]
struct Effects(PgPool);

async fn create_effects(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE fault_effects (
             key TEXT PRIMARY KEY, saga_id UUID NOT NULL, step TEXT NOT NULL,
             phase TEXT NOT NULL, seq BIGSERIAL);",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// A saga whose steps record their effect once per idempotency key; `ship` fails permanently
/// when `fail` is set, and the saga compensates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Shipment {
    fail: bool,
    work_ms: u64,
}

async fn effect(ctx: &StepContext, work_ms: u64) -> Result<(), StepError> {
    let Effects(pool) = ctx
        .state::<Effects>()
        .ok_or_else(|| StepError::permanent("no effects pool"))?;
    tokio::time::sleep(Duration::from_millis(work_ms)).await;
    sqlx::query(
        "INSERT INTO fault_effects (key, saga_id, step, phase) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(ctx.idempotency_key())
    .bind(ctx.saga_id())
    .bind(ctx.step())
    .bind(ctx.phase())
    .execute(&pool)
    .await?;
    Ok(())
}

#[dtx::saga(name = "Shipment", max_retries = 5)]
impl Shipment {
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

fn orchestrator(store: PgSagaStore, effects: &PgPool) -> SagaOrchestrator {
    SagaOrchestrator::builder(Arc::new(store))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .state(Effects(effects.clone()))
        .saga(Shipment::definition())
        .build()
        .unwrap()
}

fn worker_options(n: usize) -> WorkerOptions {
    WorkerOptions {
        id: format!("fault-worker-{n}"),
        lease: Duration::from_secs(1),
        batch: 4,
        poll_interval: Duration::from_millis(20),
    }
}

/// Waits until no saga is running, waiting or compensating; returns the counts by status.
async fn sagas_settled(sagas: &SagaOrchestrator, total: u64) -> HashMap<SagaStatus, u64> {
    eventually("every saga finished", async || {
        let counts = sagas.counts().await.ok()?;
        let finished: u64 = counts
            .iter()
            .filter(|(status, _)| status.is_finished())
            .map(|(_, n)| n)
            .sum();
        (finished == total).then_some(counts)
    })
    .await
}

/// Checks that each saga ended as its data says (completed, or compensated in reverse order)
/// with each step's effect exactly once.
async fn check_sagas(sagas: &SagaOrchestrator, pool: &PgPool, failing: &HashMap<Uuid, bool>) {
    let effects: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT saga_id, step, phase FROM fault_effects ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut by_saga: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (saga, step, phase) in effects {
        by_saga.entry(saga).or_default().push(if phase == "action" {
            step
        } else {
            format!("undo {step}")
        });
    }
    for (id, fail) in failing {
        let saga = sagas.status(*id).await.unwrap();
        let ran = by_saga.remove(id).unwrap_or_default();
        if *fail {
            assert_eq!(saga.status, SagaStatus::Compensated, "{id}");
            assert_eq!(
                ran,
                ["reserve", "charge", "undo charge", "undo reserve"],
                "{id}"
            );
        } else {
            assert_eq!(saga.status, SagaStatus::Completed, "{id}");
            assert_eq!(ran, ["reserve", "charge", "ship"], "{id}");
        }
    }
}

/// A saga worker on a `PgSagaStore` whose connections go through the proxy, its claims and
/// saves cut before, during and after they commit: every saga ends as the contract says
/// (completed, or compensated in reverse order), each step's effect once, none stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_worker_cut_before_during_and_after_its_commits() {
    const SAGAS: usize = 30;
    let direct = tests::pg_store().await;
    let pool = direct.pool().clone();
    create_effects(&pool).await;
    let proxy = FaultProxy::in_front_of(&pool).await.unwrap();
    let starter = orchestrator(PgSagaStore::new(pool.clone()), &pool);
    let proxied = orchestrator(PgSagaStore::new(proxy.pool(4).await.unwrap()), &pool);

    let mut failing = HashMap::new();
    for n in 0..SAGAS {
        let fail = n % 3 == 0;
        let id = starter.start(Shipment { fail, work_ms: 5 }).await.unwrap();
        failing.insert(id, fail);
    }
    // Every kind of cut on saves and on claims, armed before the worker starts.
    let statements = [
        Statement::containing("UPDATE saga_state s SET status = v.status"),
        Statement::containing("FOR UPDATE SKIP LOCKED"),
    ];
    for (i, cut) in CUTS.iter().cycle().take(12).enumerate() {
        proxy.arm(fault(*cut, statements[i % 2].clone()).nth(1 + u32::try_from(i).unwrap() % 3));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = {
        let worker = proxied.worker(worker_options(1));
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            worker
                .run(async move {
                    stopped.wait_for(|s| *s).await.ok();
                })
                .await
        })
    };
    fired(&proxy).await;
    let counts = sagas_settled(&starter, SAGAS as u64).await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(counts.get(&SagaStatus::Failed), None, "{counts:?}");
    check_sagas(&starter, &pool, &failing).await;
    eprintln!(
        "saga faults: {} cuts injected at saga claims and saves (4 each before, during, after), {SAGAS} sagas: {} completed, {} compensated, 0 stuck, each effect once",
        proxy.counts().faults,
        counts.get(&SagaStatus::Completed).copied().unwrap_or(0),
        counts.get(&SagaStatus::Compensated).copied().unwrap_or(0),
    );
}

fn request(key: &str) -> ClaimRequest {
    ClaimRequest::new(
        Scope::new("customer-7").unwrap(),
        IdempotencyKey::new(key).unwrap(),
        Fingerprint::of(br#"{"amount":100}"#),
    )
    .with_policy(IdempotencyPolicy::default().with_lock_timeout(Duration::from_millis(300)))
}

/// What a client's retries do with a key: claim it; run and complete the work when claimed
/// (counting the runs); wait while another attempt holds it; stop at the stored result.
async fn retry_until_completed(
    keys: &PgIdempotencyStore,
    request: &ClaimRequest,
    runs: &AtomicU64,
) -> Vec<u8> {
    eventually("the key completed", async || {
        match keys.claim(request).await.ok()? {
            Claim::Claimed(lease) => {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = keys.complete(&lease, b"charged").await;
                None
            }
            Claim::Completed(result) => Some(result),
            Claim::InFlight { .. } => None,
            Claim::Mismatch => panic!("the same request is never a mismatch"),
        }
    })
    .await
}

/// A completed key stays completed: after its lock timeout, and claimed through either pool.
async fn stays_completed(proxied: &PgIdempotencyStore, direct: &PgIdempotencyStore, key: &str) {
    let request = request(key);
    tokio::time::sleep(request.lock_timeout() * 2).await;
    for keys in [proxied, direct, proxied] {
        match keys.claim(&request).await.unwrap() {
            Claim::Completed(result) => assert_eq!(result, b"charged", "{key}"),
            other => panic!("{key}: a completed key answered {other:?}"),
        }
    }
    let record = direct
        .load(&request.scope, &request.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed, "{key}");
}

/// `PgIdempotencyStore` claims and completes cut before, during and after they commit: a
/// completion whose answer was lost still counts (the retry gets the stored result and the work
/// does not run again), and a completed key never becomes claimable again. In a unit of work
/// with the work's own writes, a cut at `COMMIT` leaves the work done exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_claim_and_complete_cut_before_during_and_after_commit() {
    let direct_events = tests::pg_store().await;
    let pool = direct_events.pool().clone();
    sqlx::query("CREATE TABLE charges (key TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let proxy = FaultProxy::in_front_of(&pool).await.unwrap();
    let proxied_pool = proxy.pool(1).await.unwrap();
    let keys = PgIdempotencyStore::new(proxied_pool.clone());
    let direct = PgIdempotencyStore::new(pool.clone());
    let mut scenarios = 0;

    // The completion, cut: the work ran once (the claim); the answer to `complete` may be lost.
    for cut in CUTS {
        let key = format!("complete-{cut:?}");
        let request = request(&key);
        let Claim::Claimed(lease) = keys.claim(&request).await.unwrap() else {
            panic!("a fresh key is claimed")
        };
        proxy.arm(fault(
            cut,
            Statement::containing("SET status = 'completed'"),
        ));
        let completed = keys.complete(&lease, b"charged").await;
        fired(&proxy).await;
        let record = direct
            .load(&request.scope, &request.key)
            .await
            .unwrap()
            .unwrap();
        let runs = AtomicU64::new(1);
        match cut {
            Cut::Before => {
                assert!(completed.is_err());
                assert_eq!(record.status, IdempotencyStatus::InProgress);
            }
            Cut::During => {
                assert!(completed.is_err(), "the answer was lost");
                assert_eq!(record.status, IdempotencyStatus::Completed);
            }
            Cut::After => {
                completed.unwrap();
                assert_eq!(record.status, IdempotencyStatus::Completed);
            }
        }
        assert_eq!(
            retry_until_completed(&keys, &request, &runs).await,
            b"charged"
        );
        // Before: the completion never happened, so after the lock timeout a retry takes the
        // key over and runs the work again (the store's documented contract, which is why
        // the work belongs in the claim's transaction: see below). Otherwise: never again.
        let expected_runs = if cut == Cut::Before { 2 } else { 1 };
        assert_eq!(runs.load(Ordering::SeqCst), expected_runs, "{key}");
        stays_completed(&keys, &direct, &key).await;
        scenarios += 1;
    }

    // The claim, cut: a claim whose answer was lost holds the key until its lock times out.
    for cut in CUTS {
        let key = format!("claim-{cut:?}");
        let request = request(&key);
        proxy.arm(fault(
            cut,
            Statement::containing("INSERT INTO idempotency_keys"),
        ));
        let claimed = keys.claim(&request).await;
        fired(&proxy).await;
        let runs = AtomicU64::new(0);
        match (cut, claimed) {
            (Cut::After, Ok(Claim::Claimed(lease))) => {
                runs.fetch_add(1, Ordering::SeqCst);
                keys.complete(&lease, b"charged").await.unwrap();
            }
            (Cut::Before | Cut::During, Err(_)) => {}
            (cut, other) => panic!("{cut:?}: {other:?}"),
        }
        assert_eq!(
            retry_until_completed(&keys, &request, &runs).await,
            b"charged"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{key}: the work ran once");
        stays_completed(&keys, &direct, &key).await;
        scenarios += 1;
    }

    // Claim, work and completion in one unit of work, cut at COMMIT: the work is done once.
    for cut in CUTS {
        let key = format!("uow-{cut:?}");
        let request = request(&key);
        let mut attempts = 0;
        let mut committed_unknown = 0;
        eventually("the unit of work done", async || {
            attempts += 1;
            if attempts == 1 {
                proxy.arm(fault(cut, Statement::Commit));
            }
            let mut uow = PgUnitOfWork::begin(&proxied_pool).await.ok()?;
            match keys.claim_in(&mut uow, &request).await.ok()? {
                Claim::Claimed(lease) => {
                    sqlx::query("INSERT INTO charges (key) VALUES ($1)")
                        .bind(&key)
                        .execute(uow.connection())
                        .await
                        .ok()?;
                    keys.complete_in(&mut uow, &lease, b"charged").await.ok()?;
                    match uow.commit().await {
                        Ok(()) => None, // the next claim replays it
                        Err(Error::CommitOutcomeUnknown { .. }) => {
                            committed_unknown += 1;
                            None
                        }
                        Err(error) => panic!("{key}: {error}"),
                    }
                }
                Claim::Completed(result) => Some(result),
                Claim::InFlight { .. } | Claim::Mismatch => panic!("{key}: nobody else holds it"),
            }
        })
        .await;
        fired(&proxy).await;
        assert_eq!(committed_unknown, u32::from(cut != Cut::After), "{key}");
        let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM charges WHERE key = $1")
            .bind(&key)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(charges, 1, "{key}: charged exactly once");
        stays_completed(&keys, &direct, &key).await;
        scenarios += 1;
    }
    let counts = proxy.counts();
    assert_eq!(counts.faults, 9);
    eprintln!(
        "idempotency faults: {} cuts injected (claim, complete and unit-of-work COMMIT; before, during, after), {scenarios} keys, 0 completed keys claimable again, 0 double charges in a unit of work",
        counts.faults
    );
}

/// What one appender of the chaos test did.
#[derive(Debug, Default)]
struct Appended {
    /// Per stream, the ids of the acknowledged events in order.
    acknowledged: BTreeMap<String, Vec<Uuid>>,
    /// Appends acknowledged.
    appends: u64,
    /// Attempts that failed on a cut (each retried with the same events).
    failed_attempts: u64,
}

/// Appends batches of one to three events to `streams` until `until`, through `store`;
/// retries each batch, with the same event ids and expectation, until it is acknowledged.
async fn append_until(store: PgEventStore, streams: Vec<StreamId>, until: Instant) -> Appended {
    let mut done = Appended::default();
    let mut versions = vec![0u64; streams.len()];
    let mut n = 0u64;
    while Instant::now() < until {
        let s = usize::try_from(n).unwrap() % streams.len();
        let stream = &streams[s];
        let batch: Vec<NewEvent> = (0..=n % 3).map(|k| event(n * 10 + k)).collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        let deadline = Instant::now() + DEADLINE;
        let result = loop {
            match store
                .append(stream, ExpectedVersion::Exact(versions[s]), batch.clone())
                .await
            {
                Ok(result) => break result,
                Err(Error::OutcomeUnknown { .. } | Error::Storage(_)) => {
                    done.failed_attempts += 1;
                    assert!(Instant::now() < deadline, "{stream}: no append got through");
                }
                Err(error) => panic!("{stream}: a retry of the same events failed: {error}"),
            }
        };
        assert_eq!(result.first_version, versions[s] + 1, "{stream}");
        versions[s] = result.last_version;
        done.acknowledged
            .entry(stream.to_string())
            .or_default()
            .extend(ids);
        done.appends += 1;
        n += 1;
    }
    done
}

/// Every connection through the proxy cut every 100–200 ms for four seconds while four tasks
/// append (retrying each batch until it is acknowledged), a relay publishes and two saga
/// workers run the sagas a starter keeps adding; then the cuts stop. Every acknowledged event
/// is stored once and in order, no event is stored that was not acknowledged, every event is
/// published at least once in per-stream order, and every saga ends as its data says with each
/// effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_connection_cut_every_100_to_200_ms() {
    const APPENDERS: usize = 4;
    const CHAOS: Duration = Duration::from_secs(4);
    let direct = tests::pg_store().await.with_outbox(true);
    let pool = direct.pool().clone();
    create_effects(&pool).await;
    let proxy = FaultProxy::in_front_of(&pool).await.unwrap();
    let proxied_pool = proxy.pool(8).await.unwrap();
    let proxied = PgEventStore::new(proxied_pool.clone()).with_outbox(true);

    let publisher = MemoryPublisher::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(supervise(
        PgOutbox::new(proxied_pool.clone()).relay(publisher.clone(), fast_relay()),
        stopped.clone(),
    ));
    let starter = orchestrator(PgSagaStore::new(pool.clone()), &pool);
    let sagas = orchestrator(PgSagaStore::new(proxied_pool.clone()), &pool);
    let workers: Vec<_> = (0..2)
        .map(|n| {
            let worker = sagas.worker(worker_options(n));
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                worker
                    .run(async move {
                        stopped.wait_for(|s| *s).await.ok();
                    })
                    .await
            })
        })
        .collect();

    proxy.start_chaos(
        Duration::from_millis(100)..Duration::from_millis(200),
        0x5eed,
    );
    let until = Instant::now() + CHAOS;
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|w| {
            let streams = (0..2)
                .map(|k| StreamId::new(format!("Chaos-{w}-{k}")).unwrap())
                .collect();
            tokio::spawn(append_until(proxied.clone(), streams, until))
        })
        .collect();
    let saga_starter = {
        let starter = starter.clone();
        tokio::spawn(async move {
            let mut failing = HashMap::new();
            let mut n = 0;
            while Instant::now() < until {
                let fail = n % 3 == 0;
                let id = starter.start(Shipment { fail, work_ms: 10 }).await.unwrap();
                failing.insert(id, fail);
                n += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failing
        })
    };
    let mut appended = Appended::default();
    for appender in appenders {
        let done = appender.await.unwrap();
        appended.acknowledged.extend(done.acknowledged);
        appended.appends += done.appends;
        appended.failed_attempts += done.failed_attempts;
    }
    let failing = saga_starter.await.unwrap();
    proxy.stop_chaos();
    let chaos = proxy.counts();

    // Nothing acknowledged lost, nothing stored twice, nothing stored unacknowledged.
    let mut events = 0;
    let mut expected = BTreeMap::new();
    for (stream, ids) in &appended.acknowledged {
        let stored = event_ids(&direct, &StreamId::new(stream.clone()).unwrap()).await;
        assert_eq!(
            &stored, ids,
            "{stream}: the acknowledged events, once, in order"
        );
        events += ids.len();
        expected.insert(stream.clone(), u64::try_from(ids.len()).unwrap());
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        usize::try_from(total).unwrap(),
        events,
        "no other event stored"
    );

    // Every event published, in order per stream; the outbox drains.
    eventually("every event published", async || {
        all_published(&publisher, &expected).then_some(())
    })
    .await;
    let direct_outbox = PgOutbox::new(pool.clone());
    eventually("the outbox empty", async || {
        (direct_outbox.counts().await.ok()?.pending == 0).then_some(())
    })
    .await;

    // Every saga finished as its data says.
    let counts = sagas_settled(&starter, u64::try_from(failing.len()).unwrap()).await;
    stop.send(true).unwrap();
    let restarts = relay.await.unwrap();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    let deliveries = publisher.published();
    let redelivered = check_delivery(&deliveries, &expected);
    assert_eq!(counts.get(&SagaStatus::Failed), None, "{counts:?}");
    check_sagas(&starter, &pool, &failing).await;
    assert!(chaos.chaos_cuts > 0, "the chaos cut connections");

    eprintln!(
        "chaos faults: {} connections cut in {CHAOS:?} ({} connections opened, {} statements); \
         {} appends acknowledged ({events} events, {} attempts failed on a cut and were retried), 0 lost, 0 duplicated; \
         {} publishes ({redelivered} redeliveries, {restarts} relay restarts), per-stream order kept; \
         {} sagas: {} completed, {} compensated, 0 stuck, each effect once",
        chaos.chaos_cuts,
        chaos.connections,
        chaos.statements,
        appended.appends,
        appended.failed_attempts,
        deliveries.len(),
        failing.len(),
        counts.get(&SagaStatus::Completed).copied().unwrap_or(0),
        counts.get(&SagaStatus::Compensated).copied().unwrap_or(0),
    );
}

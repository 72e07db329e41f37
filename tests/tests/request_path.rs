//! The request path of a service: an HTTP request with an `Idempotency-Key` through the
//! idempotency layer, a command through the bus inside the request's unit of work, events, and
//! the stored response — one commit. On a real axum server on 127.0.0.1 with a real HTTP
//! client, on PostgreSQL (and in memory where the backend matters), with connections cut by a
//! proxy that speaks PostgreSQL's framing and clients that go away mid-request.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

// The order handlers live in another crate (`examples`); naming it links them.
use examples::order::{Order, OrderId, PlaceOrder};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use dtx::cqrs::{CommandBus, Committed};
use dtx::idempotency::IdempotencyStatus;
use dtx::idempotency::http::{IDEMPOTENT_REPLAYED, IdempotencyLayer, RequestUnitOfWork};
use dtx::idempotency::{IdempotencyKey, IdempotencyStore, MemoryIdempotencyStore, Scope};
use dtx::{Aggregate, EventStore, SharedEventStore};
use dtx_postgres::{PgEventStore, PgIdempotencyStore, PgUnitOfWork};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tests::fault_proxy::{Fault, FaultProxy, Statement};
use uuid::Uuid;

/// Generous: the machine may be busy.
const DEADLINE: Duration = Duration::from_mins(1);

/// The service: places an order through the bus in the request's unit of work.
struct App {
    bus: CommandBus,
    /// How often the handler ran.
    runs: AtomicUsize,
    /// Fail (500) after placing the order, so nothing may commit.
    fail_after_append: AtomicBool,
    /// How long the handler takes after placing the order.
    delay: Duration,
    /// Told when a handler has placed its order.
    placed: tokio::sync::Notify,
    /// Wait, after placing the order, for a permit of `gate`.
    hold: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// Also record the order in `request_path_audit`, with the handler's own SQL on the
    /// request's unit of work.
    audit: AtomicBool,
}

impl App {
    fn new(store: SharedEventStore, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            bus: CommandBus::builder()
                .store(store)
                .registry()
                .build()
                .unwrap(),
            runs: AtomicUsize::new(0),
            fail_after_append: AtomicBool::new(false),
            delay,
            placed: tokio::sync::Notify::new(),
            audit: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
        })
    }
}

/// `POST /orders/{id}`: the order id is in the body, so a key's request always targets the
/// same order.
async fn place(
    State(app): State<Arc<App>>,
    uow: Option<Extension<RequestUnitOfWork>>,
    body: String,
) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let order_id: OrderId = body.trim().parse().unwrap();
    let command = PlaceOrder {
        order_id,
        customer: "ada".into(),
    };
    let committed: Committed = {
        // One-commit mode: in the request's unit of work; two-phase: on its own.
        let placed = match uow {
            Some(Extension(uow)) => {
                let mut uow = uow.lock().await.unwrap();
                let placed = app.bus.execute_in(&mut *uow, command).await;
                if placed.is_ok() && app.audit.load(Ordering::SeqCst) {
                    let conn = PgUnitOfWork::connection_of(&mut *uow).await.unwrap();
                    sqlx::query("INSERT INTO request_path_audit (order_id) VALUES ($1)")
                        .bind(order_id.to_string())
                        .execute(conn)
                        .await
                        .unwrap();
                }
                placed
            }
            None => app.bus.execute(command).await,
        };
        match placed {
            Ok(committed) => committed,
            Err(error) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
            }
        }
    };
    app.placed.notify_waiters();
    if app.hold.load(Ordering::SeqCst) {
        app.gate.acquire().await.unwrap().forget();
    }
    tokio::time::sleep(app.delay).await;
    if app.fail_after_append.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failed after placing").into_response();
    }
    let reply = serde_json::json!({ "order": order_id.to_string(), "version": committed.version, "nonce": Uuid::new_v4() });
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        reply.to_string(),
    )
        .into_response()
}

async fn serve(app: &Arc<App>, layer: IdempotencyLayer) -> SocketAddr {
    let router = Router::new()
        .route("/orders", post(place))
        .with_state(Arc::clone(app))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn layer(store: impl IdempotencyStore) -> IdempotencyLayer {
    IdempotencyLayer::new(store, |_| Scope::new("alice").ok())
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    replayed: bool,
    body: Bytes,
}

impl Reply {
    fn title(&self) -> String {
        let problem: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        problem["title"].as_str().unwrap_or_default().to_owned()
    }
}

#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    async fn place(&self, key: &str, order: OrderId) -> Reply {
        let request = axum::http::Request::post(format!("http://{}/orders", self.addr))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(order.to_string())))
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, self.client.request(request))
            .await
            .expect("the server answers")
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            replayed: parts
                .headers
                .get(IDEMPOTENT_REPLAYED)
                .is_some_and(|v| v == "true"),
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

async fn events_of(store: &dyn EventStore, order: OrderId) -> usize {
    let stream = Order::stream_id(&order).unwrap();
    store
        .read_stream(&stream, 1, usize::MAX)
        .await
        .unwrap()
        .len()
}

/// 100 concurrent identical requests in one-commit mode: the order is placed once, every
/// response that is not a 409 is the same response, and duplicates wait for the first's
/// commit instead of getting 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_identical_requests_place_one_order_with_one_commit() {
    let events = tests::pg_store().await;
    let app = App::new(Arc::new(events.clone()), Duration::from_millis(200));
    let store = PgIdempotencyStore::new(events.pool().clone());
    let http = Http::new(serve(&app, layer(store).wait(DEADLINE)).await);
    let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (http, key) = (http.clone(), key.clone());
            tokio::spawn(async move { http.place(&key, order).await })
        })
        .collect();
    let mut replies = Vec::new();
    for client in clients {
        replies.push(client.await.unwrap());
    }
    assert_eq!(events_of(&events, order).await, 1, "the order placed once");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let answered: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status != StatusCode::CONFLICT)
        .collect();
    assert_eq!(answered.len(), 100, "duplicates waited for the commit");
    assert_eq!(answered.iter().filter(|r| !r.replayed).count(), 1);
    for reply in &answered {
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body, answered[0].body, "identical responses");
    }
}

/// A handler that places the order and then fails: the events roll back with the claim, the
/// key is free, and the retry places the order once.
#[tokio::test]
async fn a_failed_handler_rolls_back_its_events_and_frees_the_key() {
    let events = tests::pg_store().await;
    let pg = PgIdempotencyStore::new(events.pool().clone());
    let memory_events = Arc::new(dtx::MemoryEventStore::new());
    let memory = MemoryIdempotencyStore::new();
    for (store, keys) in [
        (
            Arc::new(events.clone()) as SharedEventStore,
            Arc::new(pg) as Arc<dyn IdempotencyStore>,
        ),
        (
            Arc::clone(&memory_events) as SharedEventStore,
            Arc::new(memory) as Arc<dyn IdempotencyStore>,
        ),
    ] {
        let app = App::new(Arc::clone(&store), Duration::ZERO);
        let http = Http::new(serve(&app, layer(Arc::clone(&keys))).await);
        let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
        app.fail_after_append.store(true, Ordering::SeqCst);
        let failed = http.place(&key, order).await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(events_of(&*store, order).await, 0, "the events rolled back");
        let record = keys
            .load(
                &Scope::new("alice").unwrap(),
                &IdempotencyKey::new(key.as_str()).unwrap(),
            )
            .await
            .unwrap();
        assert!(record.is_none(), "the key is free: {record:?}");

        app.fail_after_append.store(false, Ordering::SeqCst);
        let placed = http.place(&key, order).await;
        assert_eq!(placed.status, StatusCode::CREATED);
        assert!(!placed.replayed);
        let replay = http.place(&key, order).await;
        assert!(replay.replayed);
        assert_eq!(replay.body, placed.body);
        assert_eq!(events_of(&*store, order).await, 1);
        assert_eq!(app.runs.load(Ordering::SeqCst), 2);
    }
}

/// The request's connection is cut before, during and after the statement that commits it:
/// in one-commit mode the one statement that writes the events with the stored response, in
/// claim-first mode its `COMMIT`. Whatever the first answer, the key's retry (on a healthy
/// server) either replays the committed response or places the order — once: the order is
/// never placed twice, and a key answered with 201 is never run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_at_commit_never_runs_an_answered_key_again() {
    let events = tests::pg_store().await;
    let proxy = FaultProxy::in_front_of(events.pool()).await.unwrap();
    let proxied = PgIdempotencyStore::new(proxy.pool(4).await.unwrap());
    let healthy = PgIdempotencyStore::new(events.pool().clone());
    let app = App::new(Arc::new(events.clone()), Duration::ZERO);
    // A retry of an answered key on another instance never runs the handler.
    let http = Http::new(serve(&app, layer(healthy).look_up_first()).await);
    let one_statement = || Statement::containing("committed_key");
    let modes = [
        (
            "one-commit",
            layer(proxied.clone()),
            [
                Fault::before(one_statement()),
                Fault::during(one_statement()),
                Fault::after(one_statement()),
            ],
        ),
        (
            "claim-first",
            layer(proxied).claim_first(),
            [
                Fault::before_commit(),
                Fault::during_commit(),
                Fault::after_commit(),
            ],
        ),
    ];
    let mut answered = 0;
    for (mode, layer, faults) in modes {
        let cut = Http::new(serve(&app, layer).await);
        for (when, fault) in ["before", "during", "after"].into_iter().zip(faults) {
            let name = format!("{mode}, {when}");
            let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
            proxy.arm(fault);
            let first = cut.place(&key, order).await;
            tokio::time::timeout(DEADLINE, proxy.fired())
                .await
                .unwrap_or_else(|_| panic!("{name}: the fault fired"));
            let runs_before_retry = app.runs.load(Ordering::SeqCst);
            let retry = http.place(&key, order).await;
            assert_eq!(retry.status, StatusCode::CREATED, "{name}: {retry:?}");
            assert_eq!(events_of(&events, order).await, 1, "{name}: placed once");
            match first.status {
                StatusCode::CREATED => {
                    answered += 1;
                    assert!(retry.replayed, "{name}: an answered key replays");
                    assert_eq!(retry.body, first.body);
                    assert_eq!(app.runs.load(Ordering::SeqCst), runs_before_retry);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    let title = first.title();
                    assert!(
                        title == "Outcome unknown" || title == "Not committed",
                        "{name}: {title}"
                    );
                }
                other => panic!("{name}: unexpected first answer {other}: {first:?}"),
            }
            let again = http.place(&key, order).await;
            assert!(again.replayed);
            assert_eq!(again.body, retry.body);
        }
    }
    assert!(answered >= 2, "the cuts after the commit still answer 201");
    eprintln!(
        "request path faults: {} cuts at the commit, {answered} answered keys, 0 run twice",
        proxy.counts().faults
    );
}

/// The record of `key` (scope `alice`), if any.
async fn record_of(
    store: &dyn IdempotencyStore,
    key: &str,
) -> Option<dtx::idempotency::IdempotencyRecord> {
    store
        .load(
            &Scope::new("alice").unwrap(),
            &IdempotencyKey::new(key).unwrap(),
        )
        .await
        .unwrap()
}

/// One-commit mode on PostgreSQL stages the handler's append and writes it with the stored
/// response in one statement. When the order's stream is written by someone else between the
/// handler's decision and that statement, the statement fails whole: the request runs again in
/// a transaction that claims the key first, whose handler now finds the order placed and fails
/// (500, not cached). Nothing of the request is stored and the key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_at_commit_writes_nothing_and_frees_the_key() {
    let events = tests::pg_store().await;
    let keys = PgIdempotencyStore::new(events.pool().clone());
    let app = App::new(Arc::new(events.clone()), Duration::ZERO);
    app.hold.store(true, Ordering::SeqCst);
    let http = Http::new(serve(&app, layer(keys.clone())).await);
    let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
    let placed = app.placed.notified();
    tokio::pin!(placed);
    placed.as_mut().enable();
    let request = {
        let (http, key) = (http.clone(), key.clone());
        tokio::spawn(async move { http.place(&key, order).await })
    };
    tokio::time::timeout(DEADLINE, placed)
        .await
        .expect("the handler placed the order");
    // Another writer places the same order first, while the request's append is staged.
    let other = App::new(Arc::new(events.clone()), Duration::ZERO);
    other
        .bus
        .execute(PlaceOrder {
            order_id: order,
            customer: "grace".into(),
        })
        .await
        .unwrap();
    // The request's handler answers; the run claiming first does not wait.
    app.hold.store(false, Ordering::SeqCst);
    app.gate.add_permits(1);
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert_eq!(
        app.runs.load(Ordering::SeqCst),
        2,
        "run again, claiming first"
    );
    assert_eq!(
        events_of(&events, order).await,
        1,
        "only the other writer's event"
    );
    assert!(record_of(&keys, &key).await.is_none(), "the key is free");
}

/// The same key sent to two instances (each with its own pool and layer) at the same moment:
/// both handlers run, one commit wins, and the other instance answers with the stored
/// response (it looks the key up once its own commit fails); its events are never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_in_another_process_replays_and_stores_nothing() {
    let events = tests::pg_store().await;
    let second_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*events.pool().connect_options()).clone())
        .await
        .unwrap();
    let second_events = PgEventStore::new(second_pool.clone());
    let first = App::new(Arc::new(events.clone()), Duration::ZERO);
    first.hold.store(true, Ordering::SeqCst);
    let second = App::new(Arc::new(second_events), Duration::ZERO);
    let first_http = Http::new(
        serve(
            &first,
            layer(PgIdempotencyStore::new(events.pool().clone())).wait(DEADLINE),
        )
        .await,
    );
    let second_http = Http::new(
        serve(
            &second,
            layer(PgIdempotencyStore::new(second_pool)).wait(DEADLINE),
        )
        .await,
    );
    let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
    let placed = first.placed.notified();
    tokio::pin!(placed);
    placed.as_mut().enable();
    let first_request = {
        let key = key.clone();
        tokio::spawn(async move { first_http.place(&key, order).await })
    };
    tokio::time::timeout(DEADLINE, placed)
        .await
        .expect("the first handler placed the order");
    // The first request is still running (its handler waits at the gate): the duplicate's
    // commit wins, and the first request, whose commit then finds the key stored, answers with
    // the duplicate's response.
    let duplicate = second_http.place(&key, order).await;
    first.gate.add_permits(1);
    let original = first_request.await.unwrap();
    assert_eq!(duplicate.status, StatusCode::CREATED, "{duplicate:?}");
    assert!(!duplicate.replayed);
    assert_eq!(original.status, StatusCode::CREATED, "{original:?}");
    assert!(
        original.replayed,
        "its commit found the key stored: {original:?}"
    );
    assert_eq!(duplicate.body, original.body, "identical responses");
    assert_eq!(events_of(&events, order).await, 1, "the order placed once");
    assert_eq!(first.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        second.runs.load(Ordering::SeqCst),
        1,
        "both handlers ran, the writes of one were discarded"
    );
}

/// A handler that runs its own SQL on the request's unit of work gets a real transaction:
/// the staged append is written in it first, then its SQL, then the stored response, one
/// `COMMIT`. A failing handler leaves none of it.
#[tokio::test]
async fn a_handler_with_its_own_sql_gets_a_real_transaction() {
    let events = tests::pg_store().await;
    sqlx::query("CREATE TABLE IF NOT EXISTS request_path_audit (order_id TEXT NOT NULL)")
        .execute(events.pool())
        .await
        .unwrap();
    let audited = |order: OrderId| {
        let pool = events.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM request_path_audit WHERE order_id = $1",
            )
            .bind(order.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let keys = PgIdempotencyStore::new(events.pool().clone());
    let app = App::new(Arc::new(events.clone()), Duration::ZERO);
    app.audit.store(true, Ordering::SeqCst);
    let http = Http::new(serve(&app, layer(keys.clone())).await);

    let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
    app.fail_after_append.store(true, Ordering::SeqCst);
    let failed = http.place(&key, order).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(events_of(&events, order).await, 0);
    assert_eq!(audited(order).await, 0, "the handler's SQL rolled back");
    assert!(record_of(&keys, &key).await.is_none(), "the key is free");

    app.fail_after_append.store(false, Ordering::SeqCst);
    let placed = http.place(&key, order).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(events_of(&events, order).await, 1);
    assert_eq!(audited(order).await, 1, "the handler's SQL committed");
    let record = record_of(&keys, &key).await.expect("stored");
    assert_eq!(record.status, IdempotencyStatus::Completed);
    let replay = http.place(&key, order).await;
    assert!(replay.replayed);
    assert_eq!(replay.body, placed.body);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
}

/// Clients that go away at every moment of their request — while the key is claimed, while
/// the handler runs, while the response is stored — never leave a stuck key: the retry of each
/// key gets the stored response or runs the command, once. In both commit modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_go_away_never_leave_a_stuck_key() {
    let events = tests::pg_store().await;
    let app = App::new(Arc::new(events.clone()), Duration::from_millis(20));
    let store = PgIdempotencyStore::new(events.pool().clone());
    for mode in ["one-commit", "two-phase"] {
        let layer = match mode {
            "one-commit" => layer(store.clone()),
            _ => layer(store.clone()).two_phase(),
        }
        .wait(DEADLINE);
        let http = Http::new(serve(&app, layer).await);
        let mut keys = Vec::new();
        for i in 0..40_u64 {
            let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
            let client = {
                let (http, key) = (http.clone(), key.clone());
                tokio::spawn(async move { http.place(&key, order).await })
            };
            // Cut the client off after 0..40 ms: before, during or after the claim, the
            // handler, the commit.
            tokio::time::sleep(Duration::from_millis(i % 40)).await;
            client.abort();
            keys.push((key, order));
        }
        for (key, order) in &keys {
            let retry = http.place(key, *order).await;
            assert_eq!(retry.status, StatusCode::CREATED, "{mode}: {retry:?}");
            assert_eq!(events_of(&events, *order).await, 1, "{mode}: placed once");
        }
        eprintln!("request path, {mode}: 40 clients cut off, 40 keys answered, 0 stuck");
    }
}

/// Two-phase mode: the connection that stores a response is cut after the handler ran. The
/// layer stores it again on another connection; the key never runs again, not even after its
/// lock would have timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_whose_storing_fails_is_stored_again_never_run_twice() {
    let events = tests::pg_store().await;
    let proxy = FaultProxy::in_front_of(events.pool()).await.unwrap();
    let store = PgIdempotencyStore::new(proxy.pool(4).await.unwrap());
    let lock = Duration::from_secs(2);
    let app = App::new(Arc::new(events.clone()), Duration::ZERO);
    let http = Http::new(serve(&app, layer(store).two_phase().lock_timeout(lock)).await);
    let (key, order) = (Uuid::new_v4().to_string(), OrderId::new());
    for cut in [
        Fault::before(Statement::containing("SET status = 'completed'")),
        Fault::during(Statement::containing("SET status = 'completed'")),
    ] {
        proxy.arm(cut);
    }
    let first = http.place(&key, order).await;
    tokio::time::timeout(DEADLINE, proxy.fired())
        .await
        .expect("both cuts fired");
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    tokio::time::sleep(lock + Duration::from_millis(500)).await;
    let retry = http.place(&key, order).await;
    assert!(retry.replayed, "stored, not run again: {retry:?}");
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

/// A layer configured after it was cloned keeps working (it used to panic), and the clone
/// keeps its own configuration.
#[test]
fn a_cloned_layer_can_still_be_configured() {
    let first = layer(MemoryIdempotencyStore::new());
    let second = first.clone().two_phase().wait(Duration::ZERO);
    assert_eq!(first.mode(), dtx::idempotency::http::CommitMode::OneCommit);
    assert_eq!(second.mode(), dtx::idempotency::http::CommitMode::TwoPhase);
}

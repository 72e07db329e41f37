//! The HTTP load rows: `http_command_first_32`, `http_command_first_32_p99`,
//! `http_command_replay_32` and `http_command_first_looked_up_32`.
//!
//! One axum server on 127.0.0.1 (an ephemeral port), in this process, with two routes:
//!
//! - `POST /orders`: the `Idempotency-Key` layer on the PostgreSQL store in its default
//!   one-commit mode, and a handler that runs `PlaceOrder` (an aggregate create command, one
//!   event) through the command bus on `PgEventStore`, in the request's unit of work: the
//!   append and the stored response are one statement. It answers 201 with a small JSON.
//! - `POST /orders-looked-up`: the same with the layer's `look_up_first()`: one read of the key
//!   before the handler runs.
//! - `POST /baseline`: no layer; one plain single-row `INSERT` of the request body into
//!   `baseline_events`, and the same kind of answer.
//!
//! 32 client tasks, each on its own keep-alive connection of hyper-util's client, send requests
//! back to back over loopback for a fixed time per side. First executions send a fresh key each
//! time; replays cycle through keys executed beforehand. Every response is checked (201; a
//! replay carries `Idempotent-Replayed: true`, a first execution does not), and failures are
//! counted and reported. The sides (baseline, first, replay) run in rounds, their order
//! rotating; a row reports the median of its rounds' rates and percentiles and the median of its
//! rounds' ratios to the baseline of the same round, so drift of this shared 2-core machine
//! hits both sides alike. Client, server and PostgreSQL share the cores.

use crate::{BoxError, Options};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Extension, Router};
use dtx::cqrs::{CommandBus, Committed};
use dtx::idempotency::Scope;
use dtx::idempotency::http::{IDEMPOTENT_REPLAYED, IdempotencyLayer, RequestUnitOfWork};
use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use dtx_postgres::{PgEventStore, PgIdempotencyStore};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent client connections.
const CONNECTIONS: usize = 32;
/// Database connections of the server: room for 32 concurrent transactions.
const POOL_SIZE: u32 = 40;
/// Keys each client task replays in turn on the replay side.
const REPLAY_KEYS_PER_TASK: usize = 16;

const BODY: &str = r#"{"customer":"c-42","total":1999}"#;

/// An order was placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
    total: u64,
}

#[derive(Debug, Clone, DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

/// The aggregate `POST /orders` creates.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = OrderEvent, name = "HttpOrder", snapshots = false)]
struct Order {
    id: Id<Order>,
    total: u64,
}

impl Apply<OrderPlaced> for Order {
    fn apply(&mut self, event: &OrderPlaced) {
        self.total = event.total;
    }
}

#[derive(Debug, Clone)]
struct PlaceOrder {
    order_id: Id<Order>,
    customer: String,
    total: u64,
}

/// Why an order was refused.
#[derive(Debug)]
struct NoCustomer;

impl std::fmt::Display for NoCustomer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an order needs a customer")
    }
}

impl std::error::Error for NoCustomer {}

#[command_handler]
impl Order {
    fn place(cmd: PlaceOrder) -> Result<OrderPlaced, NoCustomer> {
        if cmd.customer.is_empty() {
            return Err(NoCustomer);
        }
        Ok(OrderPlaced {
            customer: cmd.customer,
            total: cmd.total,
        })
    }
}

/// The body both routes accept.
#[derive(Deserialize)]
struct OrderRequest {
    customer: String,
    total: u64,
}

type Answer = (StatusCode, [(&'static str, &'static str); 1], String);

fn answer(status: StatusCode, body: String) -> Answer {
    (status, [("content-type", "application/json")], body)
}

/// `POST /orders`: the command through the bus, in the request's unit of work.
async fn place_order(
    State(bus): State<CommandBus>,
    Extension(uow): Extension<RequestUnitOfWork>,
    body: Bytes,
) -> Answer {
    let Ok(request) = serde_json::from_slice::<OrderRequest>(&body) else {
        return answer(
            StatusCode::BAD_REQUEST,
            r#"{"error":"bad body"}"#.to_owned(),
        );
    };
    let order_id = Id::<Order>::new();
    let command = PlaceOrder {
        order_id,
        customer: request.customer,
        total: request.total,
    };
    let committed: Result<Committed, String> = match uow.lock().await {
        Ok(mut uow) => bus
            .execute_in(&mut *uow, command)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match committed {
        Ok(committed) => answer(
            StatusCode::CREATED,
            format!(
                r#"{{"order":"{order_id}","version":{}}}"#,
                committed.version
            ),
        ),
        Err(error) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": error }).to_string(),
        ),
    }
}

/// `POST /baseline`: one plain INSERT.
async fn insert_order(State(pool): State<PgPool>, body: Bytes) -> Answer {
    let Ok(text) = std::str::from_utf8(&body) else {
        return answer(
            StatusCode::BAD_REQUEST,
            r#"{"error":"bad body"}"#.to_owned(),
        );
    };
    let order_id = uuid::Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, 1, $2::jsonb)",
    )
    .bind(format!("baseline-http-{order_id}"))
    .bind(text)
    .execute(&pool)
    .await;
    match inserted {
        Ok(_) => answer(
            StatusCode::CREATED,
            format!(r#"{{"order":"{order_id}","version":1}}"#),
        ),
        Err(error) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": error.to_string() }).to_string(),
        ),
    }
}

fn principal(parts: &axum::http::request::Parts) -> Option<Scope> {
    Scope::new(parts.headers.get("x-principal")?.to_str().ok()?).ok()
}

/// Starts the server; returns its address.
async fn serve(pool: &PgPool) -> Result<SocketAddr, BoxError> {
    let store = PgEventStore::new(pool.clone());
    let bus = CommandBus::builder()
        .store(Arc::new(store))
        .registry()
        .build()?;
    let layer = IdempotencyLayer::new(PgIdempotencyStore::new(pool.clone()), principal);
    let orders = Router::new()
        .route("/orders", post(place_order).layer(layer.clone()))
        .route(
            "/orders-looked-up",
            post(place_order).layer(layer.look_up_first()),
        )
        .with_state(bus);
    let baseline = Router::new()
        .route("/baseline", post(insert_order))
        .with_state(pool.clone());
    let app = orders.merge(baseline);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("http bench server stopped: {error}");
        }
    });
    Ok(address)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One side of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `POST /baseline`.
    Baseline,
    /// `POST /orders` with a fresh key each time.
    First,
    /// `POST /orders` with keys executed before.
    Replay,
    /// `POST /orders-looked-up` (the layer looks each key up first) with a fresh key each time.
    FirstLookedUp,
}

/// What a side measured in one round.
struct Measured {
    requests: usize,
    errors: usize,
    first_error: Option<String>,
    /// Each successful request's latency, in µs, sorted.
    latencies: Vec<u32>,
    elapsed: Duration,
}

impl Measured {
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    fn rate(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "index of a quantile"
        )]
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies[i])
    }
}

/// Sends one request; `Err` describes a failure (transport error, unexpected status, a replay
/// that was not one or the reverse).
async fn send(
    client: &HttpClient,
    address: SocketAddr,
    side: Side,
    key: &str,
) -> Result<(), String> {
    let path = match side {
        Side::Baseline => "baseline",
        Side::FirstLookedUp => "orders-looked-up",
        Side::First | Side::Replay => "orders",
    };
    let request = Request::post(format!("http://{address}/{path}"))
        .header("x-principal", "bench-client")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let replayed = response.headers().contains_key(IDEMPOTENT_REPLAYED);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::CREATED {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if replayed != (side == Side::Replay) {
        return Err(format!("replayed = {replayed} on the {side:?} side"));
    }
    Ok(())
}

/// The keys a replay task cycles through.
fn replay_key(run: uuid::Uuid, task: usize, n: usize) -> String {
    format!("replay-{run}-{task}-{}", n % REPLAY_KEYS_PER_TASK)
}

/// Runs one side with 32 concurrent tasks for `run_for`.
async fn drive(
    client: &HttpClient,
    address: SocketAddr,
    side: Side,
    run: uuid::Uuid,
    round: &str,
    run_for: Duration,
) -> Result<Measured, BoxError> {
    let start = Instant::now();
    let until = start + run_for;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|task| {
            let client = client.clone();
            let round = round.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut requests, mut errors, mut first_error) = (0, 0, None);
                while Instant::now() < until {
                    let key = match side {
                        Side::Replay => replay_key(run, task, requests),
                        _ => format!("{side:?}-{run}-{round}-{task}-{requests}"),
                    };
                    let sent = Instant::now();
                    let outcome = send(&client, address, side, &key).await;
                    let took = sent.elapsed();
                    requests += 1;
                    match outcome {
                        Ok(()) => {
                            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (requests, errors, first_error, latencies)
            })
        })
        .collect();
    let mut measured = Measured {
        requests: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (requests, errors, first_error, latencies) = task.await?;
        measured.requests += requests;
        measured.errors += errors;
        if measured.first_error.is_none() {
            measured.first_error = first_error;
        }
        measured.latencies.extend(latencies);
    }
    measured.elapsed = start.elapsed();
    measured.latencies.sort_unstable();
    Ok(measured)
}

/// Executes every key the replay side will replay, once.
async fn prepare_replays(
    client: &HttpClient,
    address: SocketAddr,
    run: uuid::Uuid,
) -> Result<(), BoxError> {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for n in 0..REPLAY_KEYS_PER_TASK {
                    send(&client, address, Side::First, &replay_key(run, task, n)).await?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?
            .map_err(|e| format!("preparing the replayed keys: {e}"))?;
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `http_command_first_32`, `http_command_first_32_p99` and `http_command_replay_32`.
pub(crate) async fn http_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let wanted = [
        "http_command_first_32",
        "http_command_first_32_p99",
        "http_command_replay_32",
        "http_command_first_looked_up_32",
    ];
    if !wanted.iter().any(|name| options.wants(name)) {
        return Ok(());
    }
    let wide = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let address = serve(&wide).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS * 2)
        .build_http();
    let run = uuid::Uuid::now_v7();
    prepare_replays(&client, address, run).await?;
    let sides = [
        Side::Baseline,
        Side::First,
        Side::Replay,
        Side::FirstLookedUp,
    ];
    // Warm-up: connections (HTTP and database) opened, statements prepared.
    for side in sides {
        let warm = drive(&client, address, side, run, "warm", Duration::from_secs(1)).await?;
        if warm.errors > 0 {
            eprintln!(
                "http warm-up, {side:?}: {} of {} requests failed, e.g. {}",
                warm.errors,
                warm.requests,
                warm.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    let run_for = Duration::from_secs_f64(options.http_secs);
    let mut measured: [Vec<Measured>; 4] = Default::default();
    for round in 0..options.http_rounds {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let round_name = round.to_string();
            let m = drive(&client, address, sides[side], run, &round_name, run_for).await?;
            if m.errors > 0 {
                eprintln!(
                    "http round {round}, {:?}: {} of {} requests failed, e.g. {}",
                    sides[side],
                    m.errors,
                    m.requests,
                    m.first_error.as_deref().unwrap_or("?")
                );
            }
            measured[side].push(m);
        }
    }
    let [base, first, replay, looked_up] = &measured;
    report_rate(options, "http_command_first_32", first, base);
    report_p99(options, first, base);
    report_rate(options, "http_command_replay_32", replay, base);
    report_rate(options, "http_command_first_looked_up_32", looked_up, base);
    Ok(())
}

fn failures(rounds: &[Measured]) -> (usize, usize) {
    (
        rounds.iter().map(|m| m.errors).sum(),
        rounds.iter().map(|m| m.requests).sum(),
    )
}

/// A rate row: median requests/s of each side and the median of the rounds' ratios.
fn report_rate(options: &Options, name: &str, dtx: &[Measured], base: &[Measured]) {
    if !options.wants(name) {
        return;
    }
    let rate = median(dtx.iter().map(Measured::rate).collect());
    let base_rate = median(base.iter().map(Measured::rate).collect());
    let ratios: Vec<f64> = dtx
        .iter()
        .zip(base)
        .map(|(d, b)| d.rate() / b.rate())
        .collect();
    let ratio = median(ratios.clone());
    let p = |rounds: &[Measured], q: f64| median(rounds.iter().map(|m| m.quantile_us(q)).collect());
    let (errors, requests) = failures(dtx);
    let (base_errors, base_requests) = failures(base);
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "name": name,
                "requests_per_s": rate.round(),
                "p50_us": p(dtx, 0.5).round(),
                "p99_us": p(dtx, 0.99).round(),
                "baseline": "insert_1_row_http_32",
                "baseline_per_s": base_rate.round(),
                "baseline_p50_us": p(base, 0.5).round(),
                "baseline_p99_us": p(base, 0.99).round(),
                "ratio": (ratio * 100.0).round() / 100.0,
                "round_ratios": ratios.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>(),
                "requests": requests,
                "errors": errors,
                "baseline_requests": base_requests,
                "baseline_errors": base_errors,
                "connections": CONNECTIONS,
                "rounds": dtx.len(),
                "seconds_per_side": options.http_secs,
            })
        );
    } else {
        println!(
            "{name:<22} {rate:>8.0} req/s   {:<26} {base_rate:>8.0} req/s   {ratio:>6.2}   errors {errors}/{requests}, baseline {base_errors}/{base_requests}",
            "insert_1_row_http_32",
        );
    }
}

/// `http_command_first_32_p99`: the median of the rounds' p99 latencies of first executions.
fn report_p99(options: &Options, dtx: &[Measured], base: &[Measured]) {
    let name = "http_command_first_32_p99";
    if !options.wants(name) {
        return;
    }
    let p = |rounds: &[Measured], q: f64| median(rounds.iter().map(|m| m.quantile_us(q)).collect());
    let (p99, base_p99) = (p(dtx, 0.99), p(base, 0.99));
    let (errors, requests) = failures(dtx);
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "name": name,
                "p99_us": p99.round(),
                "p50_us": p(dtx, 0.5).round(),
                "baseline": "insert_1_row_http_32",
                "baseline_p99_us": base_p99.round(),
                "baseline_p50_us": p(base, 0.5).round(),
                "ratio": (p99 / base_p99 * 100.0).round() / 100.0,
                "requests": requests,
                "errors": errors,
            })
        );
    } else {
        println!(
            "{name:<22} {p99:>10.0} µs p99   {:<26} {base_p99:>10.0} µs p99   {:>6.2}",
            "insert_1_row_http_32",
            p99 / base_p99
        );
    }
}

//! The `Idempotency-Key` layer on a real axum server on 127.0.0.1, called by a real HTTP client
//! (hyper-util's), on PostgreSQL and in memory, plus a server process killed with SIGKILL between
//! claim and completion.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use dtx::idempotency::http::{
    CommitMode, IDEMPOTENT_REPLAYED, IdempotencyLayer, X_IDEMPOTENCY_KEY,
};
use dtx::idempotency::{
    Claim, ClaimRequest, IdempotencyError, IdempotencyKey, IdempotencyRecord, IdempotencyStore,
    Lease, MemoryIdempotencyStore, Scope,
};
use dtx_postgres::PgIdempotencyStore;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The application behind the layer: counts the orders it creates.
#[derive(Default)]
struct App {
    runs: AtomicUsize,
    /// How long creating an order takes.
    delay: Duration,
    /// The first `fail_first` runs answer 503.
    fail_first: usize,
}

async fn create_order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(app.delay).await;
    if run <= app.fail_first {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    let principal = headers
        .get("x-principal")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let order = serde_json::json!({
        "order": run,
        "principal": principal,
        "body": body,
        "id": Uuid::new_v4(),
    });
    (
        StatusCode::CREATED,
        [
            ("location", format!("/orders/{run}")),
            ("set-cookie", format!("session={run}")),
            ("content-type", "application/json".to_owned()),
        ],
        order.to_string(),
    )
        .into_response()
}

fn principal_layer(store: impl IdempotencyStore) -> IdempotencyLayer {
    IdempotencyLayer::new(store, |parts| {
        let principal = parts.headers.get("x-principal")?.to_str().ok()?;
        Scope::new(principal).ok()
    })
}

fn router(app: &Arc<App>, layer: IdempotencyLayer) -> Router {
    Router::new()
        .route("/orders", post(create_order).get(|| async { "listing" }))
        .with_state(Arc::clone(app))
        .layer(layer)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn replayed(&self) -> bool {
        self.header(IDEMPOTENT_REPLAYED.as_str()) == Some("true")
    }

    /// What must be equal between the first response and its replays.
    fn stored_part(&self) -> (StatusCode, Option<&str>, Option<&str>, &Bytes) {
        (
            self.status,
            self.header("content-type"),
            self.header("location"),
            &self.body,
        )
    }

    fn problem_title(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let problem: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(problem["status"], self.status.as_u16());
        problem["title"].as_str().unwrap().to_owned()
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

    async fn send(&self, method: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{}/orders", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn post(&self, principal: &str, key: &str, body: &str) -> Reply {
        self.send(
            "POST",
            &[("x-principal", principal), ("idempotency-key", key)],
            body,
        )
        .await
    }
}

fn new_key() -> String {
    Uuid::new_v4().to_string()
}

async fn pg_store() -> PgIdempotencyStore {
    PgIdempotencyStore::new(tests::pg_store().await.pool().clone())
}

/// 100 concurrent identical requests with one key: the handler runs exactly once, and every
/// response that is not a 409 is the same response. In two-phase mode without a wait,
/// duplicates get 409 while it runs; in one-commit mode they wait for its commit and replay.
async fn hundred_concurrent_identical_requests(layer: IdempotencyLayer) {
    let two_phase = layer.mode() == CommitMode::TwoPhase;
    let app = Arc::new(App {
        delay: Duration::from_millis(400),
        ..App::default()
    });
    let http = Http::new(serve(router(&app, layer)).await);
    let key = new_key();
    let body = r#"{"item":"book","qty":1}"#;
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (http, key) = (http.clone(), key.clone());
            tokio::spawn(async move {
                let mut conflicts = 0;
                loop {
                    let reply = http.post("alice", &key, body).await;
                    if reply.status != StatusCode::CONFLICT {
                        return (conflicts, reply);
                    }
                    assert_eq!(
                        reply.problem_title(),
                        "A request is outstanding for this Idempotency-Key"
                    );
                    assert!(reply.header("retry-after").is_some());
                    conflicts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    let mut replies = Vec::new();
    let mut conflicts = 0;
    for client in clients {
        let (c, reply) = client.await.unwrap();
        conflicts += c;
        replies.push(reply);
    }
    assert_eq!(
        app.runs.load(Ordering::SeqCst),
        1,
        "the handler ran exactly once"
    );
    if two_phase {
        assert!(
            conflicts > 0,
            "duplicates arrived while the first was in flight"
        );
    }
    let originals: Vec<&Reply> = replies.iter().filter(|r| !r.replayed()).collect();
    assert_eq!(
        originals.len(),
        1,
        "one original response, the rest replays"
    );
    let first = originals[0];
    assert_eq!(first.status, StatusCode::CREATED);
    for reply in &replies {
        assert_eq!(
            reply.stored_part(),
            first.stored_part(),
            "identical responses"
        );
    }
    assert!(
        replies
            .iter()
            .filter(|r| r.replayed())
            .all(|r| r.header("set-cookie").is_none()),
        "only the chosen headers are stored and replayed"
    );
    let again = http.post("alice", &key, body).await;
    assert!(again.replayed());
    assert_eq!(again.stored_part(), first.stored_part());

    // The same key with another payload is refused with 422, and runs nothing.
    let other = http.post("alice", &key, r#"{"item":"book","qty":2}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem_title(), "Idempotency-Key is already used");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_requests_run_once_on_postgres() {
    let store = pg_store().await;
    hundred_concurrent_identical_requests(principal_layer(store.clone())).await;
    hundred_concurrent_identical_requests(principal_layer(store).two_phase().wait(Duration::ZERO))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_requests_run_once_in_memory() {
    let store = MemoryIdempotencyStore::new();
    hundred_concurrent_identical_requests(principal_layer(store.clone())).await;
    hundred_concurrent_identical_requests(principal_layer(store).two_phase().wait(Duration::ZERO))
        .await;
}

/// After the TTL the key is free: the request runs again.
#[tokio::test]
async fn expired_key_runs_again() {
    let app = Arc::new(App::default());
    let layer = principal_layer(pg_store().await)
        .ttl(Duration::from_millis(800))
        .lock_timeout(Duration::from_millis(400));
    let http = Http::new(serve(router(&app, layer)).await);
    let key = new_key();
    let first = http.post("alice", &key, "{}").await;
    let replay = http.post("alice", &key, "{}").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_expiry = http.post("alice", &key, "{}").await;
    assert_eq!(after_expiry.status, StatusCode::CREATED);
    assert!(!after_expiry.replayed());
    assert_ne!(after_expiry.body, first.body);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
}

/// Two principals using the same key get their own responses: no cross-client replay.
#[tokio::test]
async fn principals_do_not_share_results() {
    for store in [
        Arc::new(pg_store().await) as Arc<dyn IdempotencyStore>,
        Arc::new(MemoryIdempotencyStore::new()),
    ] {
        let app = Arc::new(App::default());
        let http = Http::new(serve(router(&app, principal_layer(store))).await);
        let key = new_key();
        let alice = http.post("alice", &key, "{}").await;
        let bob = http.post("bob", &key, "{}").await;
        assert!(!bob.replayed(), "bob's request ran");
        assert_ne!(alice.body, bob.body);
        let order: serde_json::Value = serde_json::from_slice(&bob.body).unwrap();
        assert_eq!(order["principal"], "bob");
        assert_eq!(app.runs.load(Ordering::SeqCst), 2);
        assert_eq!(http.post("alice", &key, "{}").await.body, alice.body);
        assert_eq!(http.post("bob", &key, "{}").await.body, bob.body);

        // Without a principal there is no scope: refused, never put in a shared one.
        let anonymous = http.send("POST", &[("idempotency-key", &key)], "{}").await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        anonymous.problem_title();
        assert_eq!(app.runs.load(Ordering::SeqCst), 2);
    }
}

/// A store that counts lookups, to show refusals happen before any.
#[derive(Default)]
struct Counting {
    inner: MemoryIdempotencyStore,
    claims: AtomicUsize,
}

#[async_trait::async_trait]
impl IdempotencyStore for Counting {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, IdempotencyError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError> {
        self.inner.complete(lease, response).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), IdempotencyError> {
        self.inner.release(lease).await
    }
    async fn load(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        self.inner.load(scope, key).await
    }
    async fn cleanup_expired(&self, limit: usize) -> Result<usize, IdempotencyError> {
        self.inner.cleanup_expired(limit).await
    }
}

/// A missing key is 400 with a link to the rules; a malformed key is 400 before any lookup.
#[tokio::test]
async fn missing_and_malformed_keys_are_refused_before_any_lookup() {
    let store = Arc::new(Counting::default());
    let app = Arc::new(App::default());
    let layer =
        principal_layer(Arc::clone(&store)).problem_type("https://example.invalid/idempotency");
    let http = Http::new(serve(router(&app, layer)).await);

    let missing = http.send("POST", &[("x-principal", "alice")], "{}").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.problem_title(), "Idempotency-Key is missing");
    assert_eq!(
        missing.header("link"),
        Some("<https://example.invalid/idempotency>; rel=\"describedby\"")
    );
    let too_long = "k".repeat(256);
    for key in [
        too_long.as_str(),
        "\"unterminated",
        "\"a\" trailing",
        "\"\"",
    ] {
        let reply = http.post("alice", key, "{}").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{key}");
        assert_eq!(reply.problem_title(), "Idempotency-Key is malformed");
        assert!(
            !String::from_utf8_lossy(&reply.body).contains(key),
            "the key is not echoed"
        );
    }
    let twice = http
        .send(
            "POST",
            &[
                ("x-principal", "alice"),
                ("idempotency-key", "a"),
                ("idempotency-key", "b"),
            ],
            "{}",
        )
        .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert_eq!(store.claims.load(Ordering::SeqCst), 0, "no lookup happened");
    assert_eq!(app.runs.load(Ordering::SeqCst), 0);

    // The Structured Field string form of the draft is the same key as the bare form.
    let key = new_key();
    let bare = http.post("alice", &key, "{}").await;
    let quoted = http.post("alice", &format!("\"{key}\""), "{}").await;
    assert!(quoted.replayed());
    assert_eq!(quoted.body, bare.body);
}

/// A retry that reaches the instance that stored the response replays it without asking the
/// store; another payload with the key, an expired record, or a layer without the cache asks it.
#[tokio::test]
async fn replays_of_this_instance_need_no_lookup() {
    for cache in [true, false] {
        let store = Arc::new(Counting::default());
        let app = Arc::new(App::default());
        let mut layer = principal_layer(Arc::clone(&store)).ttl(Duration::from_millis(1500));
        if !cache {
            layer = layer.replay_cache_bytes(0);
        }
        let http = Http::new(serve(router(&app, layer)).await);
        let key = new_key();
        let first = http.post("alice", &key, "{}").await;
        let claims = store.claims.load(Ordering::SeqCst);
        for _ in 0..3 {
            let replay = http.post("alice", &key, "{}").await;
            assert!(replay.replayed());
            assert_eq!(replay.stored_part(), first.stored_part());
        }
        let lookups = store.claims.load(Ordering::SeqCst) - claims;
        assert_eq!(lookups, if cache { 0 } else { 3 }, "cache: {cache}");
        let other = http.post("alice", &key, r#"{"other":1}"#).await;
        assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
        let other_principal = http.post("bob", &key, "{}").await;
        assert!(!other_principal.replayed());
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let after_expiry = http.post("alice", &key, "{}").await;
        assert!(!after_expiry.replayed(), "an expired record runs again");
        assert_eq!(app.runs.load(Ordering::SeqCst), 3);
    }
}

/// A 5xx is not stored: the key is released and the retry runs the handler again; the
/// successful outcome is then stored and replayed.
#[tokio::test]
async fn server_errors_release_the_key() {
    let app = Arc::new(App {
        fail_first: 1,
        ..App::default()
    });
    let http = Http::new(serve(router(&app, principal_layer(pg_store().await))).await);
    let key = new_key();
    let failed = http.post("alice", &key, "{}").await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    let retried = http.post("alice", &key, "{}").await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.replayed());
    let replayed = http.post("alice", &key, "{}").await;
    assert!(replayed.replayed());
    assert_eq!(replayed.body, retried.body);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
}

/// Other methods pass through; an optional layer passes requests without a key; the header
/// name is configurable.
#[tokio::test]
async fn configuration_methods_optional_and_header() {
    let app = Arc::new(App::default());
    let layer = principal_layer(MemoryIdempotencyStore::new())
        .header(X_IDEMPOTENCY_KEY)
        .optional();
    let http = Http::new(serve(router(&app, layer)).await);
    let get = http.send("GET", &[], "").await;
    assert_eq!(
        (get.status, &get.body[..]),
        (StatusCode::OK, &b"listing"[..])
    );
    let without = http.send("POST", &[("x-principal", "alice")], "{}").await;
    assert_eq!(without.status, StatusCode::CREATED);
    let key = new_key();
    let headers = [
        ("x-principal", "alice"),
        ("x-idempotency-key", key.as_str()),
    ];
    let first = http.send("POST", &headers, "{}").await;
    let second = http.send("POST", &headers, "{}").await;
    assert!(second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
}

/// A response larger than the store accepts. In one-commit mode nothing commits: the client
/// gets a 500 saying so and the key is free. In two-phase mode the handler's effects are done:
/// the client gets its response, and the key stays held (409) rather than run again at once.
#[tokio::test]
async fn response_too_large_to_store() {
    let app = Arc::new(App::default());
    let store = MemoryIdempotencyStore::new().with_max_response_bytes(64);
    let http = Http::new(serve(router(&app, principal_layer(store.clone()))).await);
    let key = new_key();
    let first = http.post("alice", &key, "{}").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.problem_title(), "Response too large to store");
    assert!(store.is_empty(), "nothing committed, key free");
    let second = http.post("alice", &key, "{}").await;
    assert_eq!(second.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);

    let app = Arc::new(App::default());
    let layer = principal_layer(store.clone())
        .two_phase()
        .wait(Duration::ZERO);
    let http = Http::new(serve(router(&app, layer)).await);
    let key = new_key();
    let first = http.post("alice", &key, "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.body.len() > 64);
    assert!(!store.is_empty(), "the key stays held");
    let second = http.post("alice", &key, "{}").await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

const CHILD: &str = "DTX_IDEMPOTENCY_CRASH_CHILD";
const CRASH_LOCK: Duration = Duration::from_secs(3);

fn crash_layer(store: PgIdempotencyStore) -> IdempotencyLayer {
    principal_layer(store)
        .lock_timeout(CRASH_LOCK)
        .two_phase()
        .wait(Duration::ZERO)
}

/// Not a test on its own: the server process of `a_crashed_server_does_not_lock_the_key_forever`,
/// started by it with `DTX_IDEMPOTENCY_CRASH_CHILD=<database>`. Its handler announces itself
/// and never returns; the parent kills the process with SIGKILL.
#[tokio::test]
async fn crash_child() {
    let Ok(database) = std::env::var(CHILD) else {
        return;
    };
    let options: sqlx::postgres::PgConnectOptions =
        dtx_postgres::testing::database_url().parse().unwrap();
    let options = sqlx::ConnectOptions::disable_statement_logging(options.database(&database));
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    let router = Router::new()
        .route(
            "/orders",
            post(|| async {
                println!("HANDLER_STARTED");
                std::future::pending::<()>().await;
            }),
        )
        .layer(crash_layer(PgIdempotencyStore::new(pool)));
    let addr = serve(router).await;
    println!("PORT {}", addr.port());
    // The parent kills us long before; never outlive a dead parent.
    tokio::time::sleep(Duration::from_mins(1)).await;
    std::process::exit(1);
}

/// A server process claims a key and is killed with SIGKILL before completing: the key answers
/// 409 until the lock times out, then a request with it runs (on another server process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_does_not_lock_the_key_forever() {
    use std::io::BufRead as _;
    let events = tests::pg_store().await;
    let database = events
        .pool()
        .connect_options()
        .get_database()
        .unwrap()
        .to_owned();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &database)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
                           prefix: &str| loop {
        let line = tokio::time::timeout(Duration::from_mins(1), lines.recv())
            .await
            .expect("the child answers")
            .expect("the child is running");
        // libtest prints `test crash_child ... ` without a line break before the test's output.
        if let Some((_, rest)) = line.split_once(prefix) {
            return rest.trim().to_owned();
        }
    };
    let port: u16 = next_line(&mut lines, "PORT").await.parse().unwrap();

    let key = new_key();
    let child_http = Http::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let in_child = {
        let key = key.clone();
        tokio::spawn(async move {
            let request = axum::http::Request::post(format!("http://127.0.0.1:{port}/orders"))
                .header("x-principal", "alice")
                .header("idempotency-key", key)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            // The connection dies with the child.
            child_http.client.request(request).await.is_err()
        })
    };
    next_line(&mut lines, "HANDLER_STARTED").await;
    child.kill().unwrap(); // SIGKILL: no destructor, no release
    let killed_at = Instant::now();
    child.wait().unwrap();
    assert!(in_child.await.unwrap(), "the child died mid-request");

    let store = PgIdempotencyStore::new(events.pool().clone());
    let record = store
        .load(
            &Scope::new("alice").unwrap(),
            &IdempotencyKey::new(key.as_str()).unwrap(),
        )
        .await
        .unwrap()
        .expect("the dead server's claim is stored");
    assert_eq!(
        record.status,
        dtx::idempotency::IdempotencyStatus::InProgress
    );

    let app = Arc::new(App::default());
    let http = Http::new(serve(router(&app, crash_layer(store))).await);
    let blocked = http.post("alice", &key, "{}").await;
    assert_eq!(
        blocked.status,
        StatusCode::CONFLICT,
        "locked while the lock holds"
    );
    let ran = loop {
        let reply = http.post("alice", &key, "{}").await;
        if reply.status != StatusCode::CONFLICT {
            break reply;
        }
        assert!(
            killed_at.elapsed() < CRASH_LOCK + Duration::from_secs(10),
            "the key stayed locked past its lock timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        killed_at.elapsed() >= CRASH_LOCK.saturating_sub(Duration::from_millis(500)),
        "the lock held for its timeout"
    );
    assert_eq!(ran.status, StatusCode::CREATED);
    assert!(!ran.replayed());
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
    let replay = http.post("alice", &key, "{}").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, ran.body);
}

//! The `Idempotency-Key` middleware (feature `http`): a [`tower::Layer`] for axum and any other
//! `tower` HTTP service, following the IETF HTTPAPI draft "The Idempotency-Key HTTP Header
//! Field".
//!
//! For requests with one of the configured methods (default `POST` and `PATCH`):
//!
//! | request | response |
//! |---|---|
//! | no key, and the key is required (the default) | 400, `application/problem+json` |
//! | malformed key, or the header twice | 400, before any lookup |
//! | no principal (the extractor returned `None`) | 401 |
//! | body over the limit (default 1 MiB) | 413 |
//! | first request with the key | the handler runs; its status, chosen headers and body are stored |
//! | a retry after it completed | the stored response, plus `Idempotent-Replayed: true` |
//! | a duplicate while the first is in flight | waits for it (up to [`IdempotencyLayer::wait`], 5 s) and replays; then 409 with `Retry-After` |
//! | the key with another payload (method, path and query, body) | 422 |
//! | the store is unavailable | 503 with `Retry-After` (the handler does not run) |
//!
//! **One commit** (the default): the handler's writes through the [`RequestUnitOfWork`] in the
//! request's extensions (`bus.execute_in(&mut *uow, command)`, outbox messages, saga starts)
//! and the stored response are one unit of work, committed once after the handler returns. On
//! PostgreSQL the key is not claimed first: the handler's appends are staged and written with
//! the completed record by **one statement** (a handler that runs its own SQL gets a real
//! transaction instead); identical requests to this layer wait for the first and replay it, a
//! duplicate in another process may run the handler but never commits, and a commit refused
//! because the stream moved on runs the request once more, claiming the key first
//! ([`IdempotencyLayer::one_commit`] has the details). A handler that fails or answers a status
//! that is not cached writes nothing and leaves the key free; a lost commit answers 503
//! "Outcome unknown", and the retry replays or runs once. [`IdempotencyLayer::claim_first`]
//! claims the key in the transaction before the handler runs. Handlers whose effects leave the
//! database (a payment provider) use [`IdempotencyLayer::two_phase`], which commits the claim
//! first.
//!
//! Keys are scoped by the principal the caller-supplied extractor returns, so two clients never
//! replay each other's responses, whatever keys they choose. A response the policy does not
//! cache (by default 5xx: the failure may be transient) releases the key, so a retry runs the
//! handler again. The claim, the handler and the storing of its outcome run in a task of their
//! own, to completion even if the client disconnects, so the client's retry gets the outcome
//! and no key is left held by a request nobody runs. Keys and bodies never reach logs
//! or spans: a key is named by a [`KeyDigest`](super::KeyDigest).
//!
//! ```
//! use axum::{Router, routing::post};
//! use dtx::idempotency::MemoryIdempotencyStore;
//! use dtx::idempotency::http::IdempotencyLayer;
//! use dtx::idempotency::Scope;
//!
//! let layer = IdempotencyLayer::new(MemoryIdempotencyStore::new(), |parts| {
//!     // The authenticated principal, e.g. set by the authentication middleware.
//!     let user = parts.headers.get("x-user-id")?.to_str().ok()?;
//!     Scope::new(user).ok()
//! });
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "paid" }))
//!     .layer(layer);
//! ```

use super::{
    Claim, ClaimRequest, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyPolicy,
    IdempotencyStore, Lease, Scope, SharedIdempotencyStore,
};
use crate::error::{BoxError, Error};
use crate::uow::UnitOfWork;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, LINK, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// `Idempotency-Key`, the draft's header (the default).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `X-Idempotency-Key`, used by older APIs.
pub const X_IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("x-idempotency-key");
/// `Idempotent-Replayed: true` marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Finds the principal or tenant of a request, from its parts (headers, extensions set by the
/// authentication middleware, ...). `None` refuses the request with 401.
pub type PrincipalFn = dyn Fn(&Parts) -> Option<Scope> + Send + Sync;

/// The body of the layer's responses: the handler's own (requests the layer does not handle) or
/// a buffered one (handled, replayed and refused requests).
pub type IdempotencyBody<B> = Either<B, Full<Bytes>>;

/// The `Idempotency-Key` layer; see the [module docs](self).
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: SharedIdempotencyStore,
    principal: Arc<PrincipalFn>,
    mode: CommitMode,
    wait: Duration,
    /// Requests of this layer running now, by scope and key (one-commit mode).
    in_flight: Arc<InFlight>,
    /// One-commit mode: look the key up before running the handler.
    look_up_first: bool,
    /// Responses this instance stored, replayed without asking the store; `None`: off.
    replays: Option<Replays>,
    header: HeaderName,
    methods: Vec<Method>,
    required: bool,
    policy: IdempotencyPolicy,
    max_request_bytes: usize,
    stored_headers: Vec<HeaderName>,
    cache_status: fn(StatusCode) -> bool,
    problem_type: Option<String>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("header", &c.header)
            .field("methods", &c.methods)
            .field("required", &c.required)
            .field("policy", &c.policy)
            .field("max_request_bytes", &c.max_request_bytes)
            .field("stored_headers", &c.stored_headers)
            .field("mode", &c.mode)
            .field("wait", &c.wait)
            .finish_non_exhaustive()
    }
}

/// The default cache policy: every status but 5xx (a server error may be transient, so its key
/// is released and a retry runs again).
pub fn not_server_error(status: StatusCode) -> bool {
    !status.is_server_error()
}

impl IdempotencyLayer {
    /// A layer over `store`, scoping keys by the principal `principal` finds in each request.
    ///
    /// Defaults: header `Idempotency-Key`, methods `POST` and `PATCH`, key required, TTL from
    /// `IDEMPOTENCY_TTL_HOURS` (24 h) and a 60 s lock timeout, requests up to 1 MiB, headers
    /// `content-type`, `location` and `etag` stored with the status and body, 5xx not cached.
    pub fn new<S, P>(store: S, principal: P) -> Self
    where
        S: IdempotencyStore,
        P: Fn(&Parts) -> Option<Scope> + Send + Sync + 'static,
    {
        Self {
            config: Arc::new(Config {
                store: Arc::new(store),
                principal: Arc::new(principal),
                mode: CommitMode::OneCommit,
                wait: Duration::from_secs(5),
                in_flight: Arc::default(),
                look_up_first: false,
                replays: Replays::with_bytes(DEFAULT_REPLAY_CACHE_BYTES),
                header: IDEMPOTENCY_KEY,
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                policy: super::call::default_policy(),
                max_request_bytes: 1024 * 1024,
                stored_headers: vec![CONTENT_TYPE, LOCATION, ETAG],
                cache_status: not_server_error,
                problem_type: None,
            }),
        }
    }

    /// Changes this layer's configuration; clones made before keep theirs.
    fn edit(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Runs the handler and stores its response in **one unit of work**, committed once (the
    /// default). The handler joins it through the [`RequestUnitOfWork`] in the request's
    /// extensions, so the events and outbox messages it writes commit with the stored
    /// response or not at all. A handler that fails, or answers with a status that is not
    /// cached, leaves the key free.
    ///
    /// On a store that can defer the record ([`IdempotencyStore::begin_deferred`]: on
    /// PostgreSQL) the key is not claimed up front: the handler runs at once, its appends are
    /// staged, and the commit writes them with the completed record in **one statement**
    /// (`dtx_postgres::PgDeferredUnitOfWork`; a handler that runs its own SQL gets a real
    /// transaction there). Identical requests reaching this layer meanwhile wait for the
    /// first (up to [`wait`](Self::wait)) and replay it. A duplicate running in another process
    /// at the same moment may run the handler too, but only one commits: the other's commit
    /// finds the key stored, writes nothing, and its request is answered as a retry (the
    /// stored response, or 409 / 422). When the commit fails on a write whose expectation no
    /// longer held (the stream moved on), the request is run once more in a transaction that
    /// claims the key first ([`claim_first`](Self::claim_first)), so its handler sees what
    /// changed. Other stores claim first.
    ///
    /// Only for handlers whose effects are in that database: an effect elsewhere (a payment
    /// provider, another service) happens before the commit, and if the commit then fails the
    /// key is free and a retry repeats it. Use [`two_phase`](Self::two_phase) for those.
    #[must_use]
    pub fn one_commit(self) -> Self {
        self.edit(|c| c.mode = CommitMode::OneCommit)
    }

    /// In one-commit mode, looks the key up (one read by primary key) before running the
    /// handler, so that a retry reaching an instance that did not store the response replays
    /// without running the handler at all. Off by default: a first execution then costs one
    /// round trip less, and such a retry runs the handler, whose writes never commit (its
    /// commit finds the key stored), before it is answered with the stored response.
    #[must_use]
    pub fn look_up_first(self) -> Self {
        self.edit(|c| c.look_up_first = true)
    }

    /// One commit, like [`one_commit`](Self::one_commit), but with the key claimed first in
    /// the request's transaction (on PostgreSQL: `BEGIN`, claim, the handler's statements, the
    /// completion, `COMMIT`): a duplicate in any process waits for that transaction without
    /// running the handler at all, at the price of about five more round trips per request.
    /// For handlers whose reads are expensive enough that running them for a concurrent
    /// duplicate in another process would matter.
    #[must_use]
    pub fn claim_first(self) -> Self {
        self.edit(|c| c.mode = CommitMode::ClaimFirst)
    }

    /// Commits the claim before the handler runs and stores the response after it, in
    /// separate transactions: for handlers that call other services. A duplicate meanwhile
    /// gets 409 (after waiting up to [`wait`](Self::wait)). If the process dies while the
    /// handler runs, the key stays held until its lock times out, and a retry after that runs
    /// the handler again: give such handlers their own idempotency with the service they call
    /// (pass the key on). If storing the response fails, it is retried until it is stored or
    /// the claim's lock runs out; meanwhile the key answers 409, never runs again.
    #[must_use]
    pub fn two_phase(self) -> Self {
        self.edit(|c| c.mode = CommitMode::TwoPhase)
    }

    /// How long a duplicate waits for the request holding its key to finish before it gets
    /// 409 (default 5 s; zero answers 409 at once). In the one-commit modes on PostgreSQL this
    /// also bounds the lock waits of the request's commit (its `lock_timeout`).
    #[must_use]
    pub fn wait(self, wait: Duration) -> Self {
        self.edit(|c| c.wait = wait)
    }

    /// Keeps up to `bytes` of the responses this instance stored (default 64 MiB; 0: none), so
    /// a retry that reaches the same instance replays without a round trip to the store.
    ///
    /// A completed record never changes before it expires (only expired records are taken
    /// over or cleaned up), so the copy is exact; it is kept no longer than the record's TTL,
    /// counted from before its claim. A request with the key and another payload gets 422
    /// from it the same way, without running the handler. A record deleted by hand before it
    /// expires may still be replayed by an instance that kept it.
    #[must_use]
    pub fn replay_cache_bytes(self, bytes: u64) -> Self {
        self.edit(|c| c.replays = Replays::with_bytes(bytes))
    }

    /// The commit mode: [`one_commit`](Self::one_commit), [`claim_first`](Self::claim_first) or
    /// [`two_phase`](Self::two_phase).
    pub fn mode(&self) -> CommitMode {
        self.config.mode
    }

    /// Reads the key from this header (e.g. [`X_IDEMPOTENCY_KEY`]).
    #[must_use]
    pub fn header(self, name: HeaderName) -> Self {
        self.edit(|c| c.header = name)
    }

    /// Applies to these methods only; others pass through untouched.
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.edit(|c| c.methods = methods.into_iter().collect())
    }

    /// Requests without a key pass through (without idempotency) instead of getting 400.
    #[must_use]
    pub fn optional(self) -> Self {
        self.edit(|c| c.required = false)
    }

    /// Sets TTL and lock timeout.
    #[must_use]
    pub fn policy(self, policy: IdempotencyPolicy) -> Self {
        self.edit(|c| c.policy = policy)
    }

    /// Sets how long stored responses are kept.
    #[must_use]
    pub fn ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.policy.ttl = ttl)
    }

    /// Sets how long a request holds its key before a crashed holder is presumed dead.
    #[must_use]
    pub fn lock_timeout(self, lock_timeout: Duration) -> Self {
        self.edit(|c| c.policy.lock_timeout = lock_timeout)
    }

    /// The largest request body accepted (it is read whole, to fingerprint it); larger → 413.
    #[must_use]
    pub fn max_request_bytes(self, max: usize) -> Self {
        self.edit(|c| c.max_request_bytes = max)
    }

    /// Also stores and replays this response header (never store `set-cookie` or other
    /// per-client secrets: every replay sends them again).
    #[must_use]
    pub fn store_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.stored_headers.push(name))
    }

    /// Which statuses are stored; for the others the key is released. Default:
    /// [`not_server_error`]. `|_| true` stores every outcome, as Stripe's API v1 does.
    #[must_use]
    pub fn cache_status(self, cache: fn(StatusCode) -> bool) -> Self {
        self.edit(|c| c.cache_status = cache)
    }

    /// A URI documenting the key rules: the `type` of the problem responses, and a
    /// `Link: <uri>; rel="describedby"` on the 400 for a missing key.
    #[must_use]
    pub fn problem_type(self, uri: impl Into<String>) -> Self {
        let uri = uri.into();
        self.edit(|c| c.problem_type = Some(uri))
    }
}

impl<S> tower::Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around a handler.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<IdempotencyBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The ready service handles this request; the clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        if !config.methods.contains(request.method()) {
            let response = inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(Either::Left)) });
        }
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let key = match read_key(&config, &parts.headers) {
                Ok(Some(key)) => key,
                Ok(None) => {
                    let response = inner.call(Request::from_parts(parts, body));
                    return Ok(response.await?.map(Either::Left));
                }
                Err(refusal) => return Ok((*refusal).map(Either::Right)),
            };
            let Some(scope) = (config.principal)(&parts) else {
                return Ok(config
                    .problem(
                        StatusCode::UNAUTHORIZED,
                        "No principal for the Idempotency-Key",
                        "idempotency keys are scoped by the caller's identity; authenticate the request",
                    )
                    .map(Either::Right));
            };
            let body = match Limited::new(body, config.max_request_bytes).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let response = if error.downcast_ref::<LengthLimitError>().is_some() {
                        config.problem(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "Request body too large",
                            "the body of a request with an Idempotency-Key is read whole to fingerprint it",
                        )
                    } else {
                        config.problem(
                            StatusCode::BAD_REQUEST,
                            "Unreadable request body",
                            "the request body could not be read",
                        )
                    };
                    return Ok(response.map(Either::Right));
                }
            };
            let fingerprint = Fingerprint::builder()
                .part(parts.method.as_str().as_bytes())
                .part(
                    parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .as_bytes(),
                )
                .part(&body)
                .finish();
            let claim = ClaimRequest::new(scope, key, fingerprint).with_policy(config.policy);
            // Claim, run and store in a task of its own: a client that goes away cancels none
            // of it, so a claimed key always gets its outcome (or is freed), and the client's
            // retry finds it.
            let task = tokio::spawn(process(Arc::clone(&config), inner, parts, body, claim));
            match task.await {
                Ok(result) => Ok(result?.map(Either::Right)),
                Err(error) => match error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => Ok(config
                        .problem(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Shutting down",
                            "the request was cancelled; retry it with the same Idempotency-Key",
                        )
                        .map(Either::Right)),
                },
            }
        })
    }
}

/// How the layer commits a request's idempotency record; see
/// [`IdempotencyLayer::one_commit`] and [`IdempotencyLayer::two_phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitMode {
    /// Handler and stored response in one unit of work, committed once; on PostgreSQL one
    /// statement when the handler's writes can be staged.
    OneCommit,
    /// Claim, handler and stored response in one transaction begun before the handler.
    ClaimFirst,
    /// The claim committed before the handler runs, the response stored after it.
    TwoPhase,
}

/// The unit of work of a request in one-commit mode, in the request's extensions: the
/// handler's writes through it commit with the stored response, or not at all.
///
/// With axum, take it as `Extension<RequestUnitOfWork>`:
///
/// ```
/// use axum::{Extension, Router, extract::State, routing::post};
/// use dtx::idempotency::http::{IdempotencyLayer, RequestUnitOfWork};
/// use dtx::idempotency::{MemoryIdempotencyStore, Scope};
/// use dtx::outbox::{MemoryOutbox, NewOutboxMessage, Outbox};
/// use std::sync::Arc;
///
/// async fn pay(
///     State(outbox): State<Arc<MemoryOutbox>>,
///     Extension(uow): Extension<RequestUnitOfWork>,
/// ) -> Result<&'static str, String> {
///     let mut uow = uow.lock().await.map_err(|e| e.to_string())?;
///     // `bus.execute_in(&mut *uow, command)` joins it the same way.
///     let message = NewOutboxMessage::new("payments", "Paid", &100).map_err(|e| e.to_string())?;
///     outbox.enqueue_in(&mut *uow, vec![message]).await.map_err(|e| e.to_string())?;
///     Ok("paid")
/// }
///
/// let app: Router = Router::new()
///     .route("/payments", post(pay))
///     .with_state(Arc::new(MemoryOutbox::new()))
///     .layer(IdempotencyLayer::new(MemoryIdempotencyStore::new(), |_| Scope::new("user-1").ok()));
/// ```
#[derive(Clone)]
pub struct RequestUnitOfWork {
    slot: Arc<tokio::sync::Mutex<Option<Box<dyn UnitOfWork>>>>,
}

impl fmt::Debug for RequestUnitOfWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestUnitOfWork").finish_non_exhaustive()
    }
}

impl RequestUnitOfWork {
    fn new(uow: Box<dyn UnitOfWork>) -> Self {
        Self {
            slot: Arc::new(tokio::sync::Mutex::new(Some(uow))),
        }
    }

    /// The unit of work, for as long as the guard lives (one user at a time).
    /// [`Error::UnitOfWorkEnded`] once the request's handler has returned and the layer has
    /// taken it back (a task the handler spawned that outlived it, say).
    pub async fn lock(&self) -> crate::Result<UnitOfWorkGuard> {
        let guard = Arc::clone(&self.slot).lock_owned().await;
        if guard.is_none() {
            return Err(Error::UnitOfWorkEnded);
        }
        Ok(UnitOfWorkGuard(guard))
    }

    /// Takes the unit of work back once the handler is done.
    async fn take(&self) -> Option<Box<dyn UnitOfWork>> {
        self.slot.lock().await.take()
    }
}

/// The request's unit of work, locked: use it as `&mut *guard` where a `&mut dyn UnitOfWork`
/// is expected.
pub struct UnitOfWorkGuard(tokio::sync::OwnedMutexGuard<Option<Box<dyn UnitOfWork>>>);

impl fmt::Debug for UnitOfWorkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitOfWorkGuard").finish_non_exhaustive()
    }
}

impl std::ops::Deref for UnitOfWorkGuard {
    type Target = dyn UnitOfWork;

    fn deref(&self) -> &Self::Target {
        match self.0.as_deref() {
            Some(uow) => uow,
            None => unreachable!("a guard is only made over a present unit of work"),
        }
    }
}

impl std::ops::DerefMut for UnitOfWorkGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self.0.as_deref_mut() {
            Some(uow) => uow,
            None => unreachable!("a guard is only made over a present unit of work"),
        }
    }
}

/// A claim this request holds.
enum Held {
    /// Inside a unit of work that is not committed yet (one-commit mode).
    InUnitOfWork(Box<dyn UnitOfWork>, Lease),
    /// Committed (two-phase mode).
    Committed(Lease),
}

/// Claims the key and runs the handler, or answers from the key's state.
async fn process<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    parts: Parts,
    body: Bytes,
    claim: ClaimRequest,
) -> Result<Response<Full<Bytes>>, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    match config.replays.as_ref().and_then(|r| r.get(&claim)) {
        Some(Ok(stored)) => return Ok(replay(&config, claim.digest(), &stored)),
        Some(Err(Mismatch)) => return Ok(key_reused(&config, claim.digest())),
        None => {}
    }
    // The record expires no earlier than its claim's TTL from now.
    let kept_until = std::time::Instant::now() + claim.ttl();
    let (response, stored) = if config.mode == CommitMode::OneCommit {
        deferred(&config, inner, parts, body, &claim).await?
    } else {
        claimed(
            &config,
            inner,
            Request::from_parts(parts, ReqBody::from(body)),
            &claim,
        )
        .await?
    };
    if let (Some(replays), Some(stored)) = (&config.replays, stored) {
        replays.insert(&claim, stored, kept_until);
    }
    Ok(response)
}

/// Claims the key first, then runs the handler (in the claim's unit of work, or after the
/// claim committed), or answers from the key's state.
async fn claimed<S, ReqBody, ResBody>(
    config: &Config,
    inner: S,
    request: Request<ReqBody>,
    claim: &ClaimRequest,
) -> Result<Outcome, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    Ok(match hold(config, claim).await {
        Ok(Held::InUnitOfWork(uow, lease)) => run_in(config, inner, request, uow, lease).await?,
        Ok(Held::Committed(lease)) => run(config, inner, request, lease).await?,
        Err(answer) => (*answer, None),
    })
}

/// One-commit mode: runs the handler in a unit of work that stores the record as it commits
/// (when the store can), after the identical requests of this layer that came first.
async fn deferred<S, ReqBody, ResBody>(
    config: &Config,
    inner: S,
    parts: Parts,
    body: Bytes,
    claim: &ClaimRequest,
) -> Result<Outcome, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let digest = claim.digest();
    let deadline = tokio::time::Instant::now() + config.wait;
    let leader = loop {
        match config.in_flight.join(claim) {
            Joined::First(leader) => break leader,
            Joined::After(mut first) => {
                let waited = tokio::time::timeout_at(deadline, first.wait_for(Option::is_some))
                    .await
                    .map(|done| done.ok().and_then(|kept| kept.clone()));
                match waited {
                    Ok(Some(kept)) if kept.fingerprint == claim.fingerprint => {
                        return Ok((replay(config, digest, &kept.stored), None));
                    }
                    Ok(Some(_)) => return Ok((key_reused(config, digest), None)),
                    // The first ended without storing an outcome: the key is free.
                    Ok(None) => {}
                    Err(_) => {
                        let locked_until = chrono::Utc::now()
                            + chrono::Duration::from_std(claim.lock_timeout())
                                .unwrap_or(chrono::Duration::MAX);
                        return Ok((in_flight(config, digest, locked_until), None));
                    }
                }
            }
        }
    };
    if config.look_up_first
        && let Some(answer) = stored_answer(config, claim).await
    {
        return Ok((answer, None));
    }
    let lock_wait = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(1));
    let outcome = match config.store.begin_deferred(claim, lock_wait).await {
        Ok(Some((uow, lease))) => {
            let again = (parts.clone(), body.clone());
            let request = Request::from_parts(parts, ReqBody::from(body));
            if let Some(outcome) =
                run_deferred(config, inner.clone(), request, uow, lease, claim).await?
            {
                outcome
            } else {
                let request = Request::from_parts(again.0, ReqBody::from(again.1));
                claimed(config, inner, request, claim).await?
            }
        }
        Ok(None) => {
            let request = Request::from_parts(parts, ReqBody::from(body));
            claimed(config, inner, request, claim).await?
        }
        Err(error) => (unavailable(config, digest, &error), None),
    };
    if let Some(stored) = &outcome.1 {
        leader.finish(claim.fingerprint, stored.clone());
    }
    Ok(outcome)
}

/// Runs the handler in a deferred unit of work, stores its response there and commits. `None`
/// when the commit failed on the server (the key was stored meanwhile, or a staged write no
/// longer held): nothing was written, and the request is to be run again claiming first.
async fn run_deferred<S, ReqBody, ResBody>(
    config: &Config,
    mut inner: S,
    mut request: Request<ReqBody>,
    uow: Box<dyn UnitOfWork>,
    lease: Lease,
    claim: &ClaimRequest,
) -> Result<Option<Outcome>, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let digest = lease.digest();
    let handle = RequestUnitOfWork::new(uow);
    request.extensions_mut().insert(handle.clone());
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            drop(handle.take().await);
            return match stored_answer(config, claim).await {
                Some(answer) => Ok(Some((answer, None))),
                None => Err(error),
            };
        }
    };
    match finish_in(config, handle, response, &lease).await {
        Finished::Done(outcome) => Ok(Some(outcome)),
        Finished::Uncached(response) => {
            // A request with this key may have completed meanwhile: its outcome is the answer.
            let answer = stored_answer(config, claim).await;
            Ok(Some((answer.unwrap_or(response), None)))
        }
        Finished::Refused(error) => {
            tracing::debug!(key = %digest, %error, "deferred commit refused; nothing written, claiming the key");
            Ok(None)
        }
    }
}

/// The answer a key's stored record gives (its response, or 422 for another payload), if it
/// has a live completed one.
async fn stored_answer(config: &Config, claim: &ClaimRequest) -> Option<Response<Full<Bytes>>> {
    let record = config
        .store
        .load(&claim.scope, &claim.key)
        .await
        .ok()
        .flatten()?;
    if record.status != super::IdempotencyStatus::Completed
        || record.expires_at <= chrono::Utc::now()
    {
        return None;
    }
    if record.fingerprint != claim.fingerprint {
        return Some(key_reused(config, claim.digest()));
    }
    Some(replay(
        config,
        claim.digest(),
        record.response.as_deref().unwrap_or_default(),
    ))
}

/// The requests of one layer running now (one-commit mode), by scope and key: an identical
/// request waits for the first one's outcome instead of running the handler too.
#[derive(Default)]
struct InFlight {
    running: std::sync::Mutex<std::collections::HashMap<(Scope, IdempotencyKey), Running>>,
    next: std::sync::atomic::AtomicU64,
}

/// A running request: its number, and its outcome once stored.
struct Running {
    id: u64,
    outcome: tokio::sync::watch::Receiver<Option<Arc<Kept>>>,
}

/// Whether a request runs first or after an identical one.
enum Joined {
    First(Leader),
    After(tokio::sync::watch::Receiver<Option<Arc<Kept>>>),
}

/// The first request of its key: tells those waiting its outcome, and leaves as it is dropped.
struct Leader {
    in_flight: Arc<InFlight>,
    entry: (Scope, IdempotencyKey),
    id: u64,
    outcome: tokio::sync::watch::Sender<Option<Arc<Kept>>>,
}

impl InFlight {
    fn join(self: &Arc<Self>, claim: &ClaimRequest) -> Joined {
        let entry = (claim.scope.clone(), claim.key.clone());
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(first) = running.get(&entry)
            && first.outcome.has_changed().is_ok()
        {
            return Joined::After(first.outcome.clone());
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (outcome, watching) = tokio::sync::watch::channel(None);
        running.insert(
            entry.clone(),
            Running {
                id,
                outcome: watching,
            },
        );
        Joined::First(Leader {
            in_flight: Arc::clone(self),
            entry,
            id,
            outcome,
        })
    }
}

impl Leader {
    /// The request stored `stored`: those waiting replay it.
    fn finish(&self, fingerprint: Fingerprint, stored: Vec<u8>) {
        self.outcome.send_replace(Some(Arc::new(Kept {
            fingerprint,
            stored,
            until: std::time::Instant::now(),
        })));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut running = self
            .in_flight
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.get(&self.entry).is_some_and(|r| r.id == self.id) {
            running.remove(&self.entry);
        }
    }
}

/// The default size of a layer's replay cache.
const DEFAULT_REPLAY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Responses this instance stored, by scope and key: see [`IdempotencyLayer::replay_cache_bytes`].
#[derive(Clone)]
struct Replays(moka::sync::Cache<(Scope, IdempotencyKey), Arc<Kept>>);

/// A key kept for another payload than a request's.
struct Mismatch;

/// A stored response as this instance stored it.
struct Kept {
    fingerprint: Fingerprint,
    stored: Vec<u8>,
    until: std::time::Instant,
}

impl Replays {
    fn with_bytes(bytes: u64) -> Option<Self> {
        (bytes > 0).then(|| {
            Self(
                moka::sync::Cache::builder()
                    .max_capacity(bytes)
                    .weigher(|_, kept: &Arc<Kept>| {
                        u32::try_from(kept.stored.len().saturating_add(128)).unwrap_or(u32::MAX)
                    })
                    .build(),
            )
        })
    }

    /// The response stored for this claim's key, while its record lives: `Err` when it was
    /// stored for another payload.
    fn get(&self, claim: &ClaimRequest) -> Option<Result<Vec<u8>, Mismatch>> {
        let kept = self.0.get(&(claim.scope.clone(), claim.key.clone()))?;
        if std::time::Instant::now() >= kept.until {
            return None;
        }
        Some(if kept.fingerprint == claim.fingerprint {
            Ok(kept.stored.clone())
        } else {
            Err(Mismatch)
        })
    }

    fn insert(&self, claim: &ClaimRequest, stored: Vec<u8>, until: std::time::Instant) {
        let kept = Kept {
            fingerprint: claim.fingerprint,
            stored,
            until,
        };
        self.0
            .insert((claim.scope.clone(), claim.key.clone()), Arc::new(kept));
    }
}

/// A response, and what was stored of it (committed), if anything.
type Outcome = (Response<Full<Bytes>>, Option<Vec<u8>>);

/// Claims the key: waits (up to the layer's `wait`) while another request holds it, and
/// answers a replay, a mismatch, a key still held, or an unavailable store.
async fn hold(config: &Config, claim: &ClaimRequest) -> Result<Held, Box<Response<Full<Bytes>>>> {
    let digest = claim.digest();
    let deadline = tokio::time::Instant::now() + config.wait;
    let pauses = crate::Backoff::new(
        Duration::from_millis(5),
        Duration::from_millis(200),
        crate::Jitter::Equal,
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut uow = None;
        if config.mode != CommitMode::TwoPhase {
            let lock_wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match config
                .store
                .begin(lock_wait.max(Duration::from_millis(1)))
                .await
            {
                Ok(begun) => uow = begun,
                Err(error) => return Err(Box::new(unavailable(config, digest, &error))),
            }
        }
        let claimed = super::traced_claim(&*config.store, claim, uow.as_deref_mut()).await;
        // Below, a unit of work that is not returned is dropped: rolled back, writing nothing.
        match claimed {
            Ok(Claim::Claimed(lease)) => {
                tracing::debug!(key = %digest, "idempotency key claimed");
                return Ok(match uow {
                    Some(uow) => Held::InUnitOfWork(uow, lease),
                    None => Held::Committed(lease),
                });
            }
            Ok(Claim::Completed(stored)) => return Err(Box::new(replay(config, digest, &stored))),
            Ok(Claim::Mismatch) => return Err(Box::new(key_reused(config, digest))),
            Ok(Claim::InFlight { locked_until }) => {
                drop(uow);
                let pause = pauses.delay(attempt);
                if tokio::time::Instant::now() + pause < deadline {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                return Err(Box::new(in_flight(config, digest, locked_until)));
            }
            Err(error) => return Err(Box::new(unavailable(config, digest, &error))),
        }
    }
}

/// 422: the key was used with another payload.
fn key_reused(config: &Config, digest: super::KeyDigest) -> Response<Full<Bytes>> {
    tracing::debug!(key = %digest, "idempotency key reused with another payload");
    crate::telemetry::record_idempotency_conflict("key_reused");
    config.problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Idempotency-Key is already used",
        "this key was used with another request payload; use a new key for a new request",
    )
}

/// 409: another request holds the key (until `locked_until` at the latest).
fn in_flight(
    config: &Config,
    digest: super::KeyDigest,
    locked_until: chrono::DateTime<chrono::Utc>,
) -> Response<Full<Bytes>> {
    tracing::debug!(key = %digest, "idempotency key in flight");
    crate::telemetry::record_idempotency_conflict("in_flight");
    let mut response = config.problem(
        StatusCode::CONFLICT,
        "A request is outstanding for this Idempotency-Key",
        "a request with this key is still being processed; retry later",
    );
    let wait = (locked_until - chrono::Utc::now())
        .num_seconds()
        .clamp(1, 3600);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(wait));
    response
}

/// 500 or 503: the response could not be stored (nothing was committed).
fn not_stored(config: &Config, error: &IdempotencyError) -> Response<Full<Bytes>> {
    match error {
        IdempotencyError::ResponseTooLarge { .. } => config.problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Response too large to store",
            "the response is larger than the idempotency store accepts; nothing was committed",
        ),
        _ => config.retry_later(
            "Idempotency store unavailable",
            "the request was not committed; retry it with the same Idempotency-Key",
        ),
    }
}

/// 503 "Outcome unknown": the connection failed while committing.
fn outcome_unknown(config: &Config) -> Response<Full<Bytes>> {
    config.retry_later(
        "Outcome unknown",
        "the connection failed while committing; retry with the same Idempotency-Key: \
         it replays the response if the request committed, or runs it once if not",
    )
}

/// 503: the store could not be asked; the handler did not run.
fn unavailable(
    config: &Config,
    digest: super::KeyDigest,
    error: &IdempotencyError,
) -> Response<Full<Bytes>> {
    tracing::warn!(key = %digest, %error, "idempotency store unavailable; refusing the request");
    config.retry_later(
        "Idempotency store unavailable",
        "the request was not processed; retry it with the same Idempotency-Key",
    )
}

/// The stored response, marked as replayed.
fn replay(config: &Config, digest: super::KeyDigest, stored: &[u8]) -> Response<Full<Bytes>> {
    match decode(stored) {
        Ok(mut response) => {
            tracing::debug!(key = %digest, "idempotent response replayed");
            crate::telemetry::record_idempotency_replay();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        Err(reason) => {
            tracing::error!(key = %digest, reason, "stored idempotent response does not decode");
            config.problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Stored response unreadable",
                "the response stored for this Idempotency-Key cannot be replayed",
            )
        }
    }
}

/// Runs the handler inside the claim's unit of work, stores its response there and commits
/// once; a failed handler, an uncached status or a failed commit writes nothing.
async fn run_in<S, ReqBody, ResBody>(
    config: &Config,
    mut inner: S,
    mut request: Request<ReqBody>,
    uow: Box<dyn UnitOfWork>,
    lease: Lease,
) -> Result<Outcome, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let digest = lease.digest();
    let handle = RequestUnitOfWork::new(uow);
    request.extensions_mut().insert(handle.clone());
    // Dropping the unit of work anywhere below rolls it back, freeing the key.
    let response = inner.call(request).await?;
    Ok(match finish_in(config, handle, response, &lease).await {
        Finished::Done(outcome) => outcome,
        Finished::Uncached(response) => (response, None),
        Finished::Refused(error) => {
            tracing::warn!(key = %digest, %error, "commit failed; nothing committed, key free");
            (
                config.retry_later(
                    "Not committed",
                    "the request could not be committed; retry it with the same Idempotency-Key",
                ),
                None,
            )
        }
    })
}

/// How a handler's response ended in the request's unit of work ([`finish_in`]).
enum Finished {
    /// Committed with its stored outcome, or answered with nothing committed (the body failed,
    /// the outcome could not be stored, the commit's outcome is unknown).
    Done(Outcome),
    /// A status the layer does not cache: rolled back, the key free.
    Uncached(Response<Full<Bytes>>),
    /// The commit was refused: nothing was written.
    Refused(Error),
}

/// Reads the handler's `response` whole, stores it with the claim of `lease` in the request's
/// unit of work (`handle`) and commits once; a failed body, an uncached status or a failed
/// store rolls the unit of work back instead.
async fn finish_in<ResBody>(
    config: &Config,
    handle: RequestUnitOfWork,
    response: Response<ResBody>,
    lease: &Lease,
) -> Finished
where
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let digest = lease.digest();
    let (response, body) = match buffer(response).await {
        Ok(buffered) => buffered,
        Err(error) => {
            tracing::warn!(key = %digest, %error, "handler's response body failed; nothing committed");
            return Finished::Done((config.body_failed(), None));
        }
    };
    let Some(mut uow) = handle.take().await else {
        unreachable!("only the layer takes the request's unit of work")
    };
    if !(config.cache_status)(response.status()) {
        tracing::debug!(key = %digest, status = response.status().as_u16(), "outcome not cached; rolled back, key free");
        rollback(uow, digest).await;
        return Finished::Uncached(response);
    }
    let stored = encode(
        response.status(),
        response.headers(),
        &config.stored_headers,
        &body,
    );
    if let Err(error) = config.store.complete_in(&mut *uow, lease, &stored).await {
        tracing::warn!(key = %digest, %error, "response not stored; rolled back, key free");
        rollback(uow, digest).await;
        return Finished::Done((not_stored(config, &error), None));
    }
    match uow.commit_boxed().await {
        Ok(()) => Finished::Done((response, Some(stored))),
        Err(error @ Error::CommitOutcomeUnknown { .. }) => {
            tracing::warn!(key = %digest, %error, "commit outcome unknown");
            Finished::Done((outcome_unknown(config), None))
        }
        Err(error) => Finished::Refused(error),
    }
}

/// The handler's response with its body read whole (to store it), and the body.
async fn buffer<B>(response: Response<B>) -> Result<(Response<Full<Bytes>>, Bytes), BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(Into::into)?.to_bytes();
    Ok((Response::from_parts(parts, Full::new(body.clone())), body))
}

async fn rollback(uow: Box<dyn UnitOfWork>, digest: super::KeyDigest) {
    if let Err(error) = uow.rollback_boxed().await {
        tracing::debug!(key = %digest, %error, "rollback failed; the transaction ends with its connection");
    }
}

/// Releases a claim whose request ended without storing an outcome (a panic in the handler).
struct ReleaseOnDrop {
    store: SharedIdempotencyStore,
    lease: Option<Lease>,
}

impl ReleaseOnDrop {
    async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            release(&*self.store, &lease).await;
        }
    }

    fn disarm(mut self) {
        self.lease = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let store = Arc::clone(&self.store);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { release(&*store, &lease).await });
            }
        }
    }
}

async fn release(store: &dyn IdempotencyStore, lease: &Lease) {
    if let Err(error) = store.release(lease).await {
        tracing::warn!(key = %lease.digest(), %error, "could not release an idempotency key; it frees itself when its lock times out");
    }
}

/// Runs the handler for a claim committed before it (two-phase mode) and stores (or
/// releases) its outcome.
async fn run<S, ReqBody, ResBody>(
    config: &Config,
    mut inner: S,
    request: Request<ReqBody>,
    lease: Lease,
) -> Result<Outcome, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let digest = lease.digest();
    let guard = ReleaseOnDrop {
        store: Arc::clone(&config.store),
        lease: Some(lease.clone()),
    };
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            guard.release().await;
            return Err(error);
        }
    };
    let (response, body) = match buffer(response).await {
        Ok(buffered) => buffered,
        Err(error) => {
            tracing::warn!(key = %digest, %error, "handler's response body failed; key released");
            guard.release().await;
            return Ok((config.body_failed(), None));
        }
    };
    if !(config.cache_status)(response.status()) {
        tracing::debug!(key = %digest, status = response.status().as_u16(), "outcome not cached; key released");
        guard.release().await;
        return Ok((response, None));
    }
    let stored = encode(
        response.status(),
        response.headers(),
        &config.stored_headers,
        &body,
    );
    // The handler ran: from here on the key is never released. It holds the stored response,
    // or stays held (409) until its lock runs out.
    guard.disarm();
    match store_response(&*config.store, &lease, &stored).await {
        Ok(()) => return Ok((response, Some(stored))),
        Err(error @ IdempotencyError::ResponseTooLarge { .. }) => {
            // Nothing can ever be stored: a retry would run again. Say so rather than
            // answer as if the outcome were kept.
            tracing::error!(key = %digest, %error, "response too large to store; the key stays held until its lock times out");
        }
        Err(error) => {
            tracing::error!(key = %digest, %error, "response not stored; the key stays held until its lock times out");
        }
    }
    Ok((response, None))
}

/// Stores a handler's response, retrying failures (a lost connection, say) until it is
/// stored, the claim is lost, or its lock runs out — the key is held meanwhile.
async fn store_response(
    store: &dyn IdempotencyStore,
    lease: &Lease,
    stored: &[u8],
) -> Result<(), IdempotencyError> {
    let pauses = crate::Backoff::new(
        Duration::from_millis(20),
        Duration::from_secs(2),
        crate::Jitter::Equal,
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match store.complete(lease, stored).await {
            Ok(()) => return Ok(()),
            Err(
                error @ (IdempotencyError::ResponseTooLarge { .. }
                | IdempotencyError::LeaseLost { .. }),
            ) => {
                return Err(error);
            }
            Err(error) => error,
        };
        let pause = pauses.delay(attempt);
        let left = (lease.locked_until() - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        if left <= pause {
            return Err(error);
        }
        tracing::warn!(key = %lease.digest(), %error, attempt, "storing the response failed; retrying");
        tokio::time::sleep(pause).await;
    }
}

fn read_key(
    config: &Config,
    headers: &HeaderMap,
) -> Result<Option<IdempotencyKey>, Box<Response<Full<Bytes>>>> {
    let mut values = headers.get_all(&config.header).iter();
    let Some(value) = values.next() else {
        if !config.required {
            return Ok(None);
        }
        let mut response = config.problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key is missing",
            &format!("this operation requires an `{}` header", config.header),
        );
        if let Some(uri) = &config.problem_type
            && let Ok(link) = HeaderValue::from_str(&format!("<{uri}>; rel=\"describedby\""))
        {
            response.headers_mut().insert(LINK, link);
        }
        return Err(Box::new(response));
    };
    let malformed = |detail: &str| {
        Box::new(config.problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key is malformed",
            detail,
        ))
    };
    if values.next().is_some() {
        return Err(malformed("send the Idempotency-Key header once"));
    }
    let text = value
        .to_str()
        .map_err(|_| malformed("a key is visible ASCII text"))?;
    match IdempotencyKey::from_header_value(text) {
        Ok(key) => Ok(Some(key)),
        Err(error) => Err(malformed(&error.to_string())),
    }
}

impl Config {
    /// 503 with `Retry-After: 1`: nothing was done, the client may retry with the same key.
    fn retry_later(&self, title: &str, detail: &str) -> Response<Full<Bytes>> {
        let mut response = self.problem(StatusCode::SERVICE_UNAVAILABLE, title, detail);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }

    /// 500: the handler's response body failed; nothing of the request was kept.
    fn body_failed(&self) -> Response<Full<Bytes>> {
        self.problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Response failed",
            "the response body could not be produced; nothing was stored",
        )
    }

    /// An RFC 9457 problem response.
    fn problem(&self, status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "type": self.problem_type.as_deref().unwrap_or("about:blank"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

const FORMAT: u8 = 1;

/// A stored response: format byte, status (u16), header count (u16), each header as name
/// length (u16), name, value length (u32), value; then the body.
fn encode(status: StatusCode, headers: &HeaderMap, stored: &[HeaderName], body: &[u8]) -> Vec<u8> {
    let chosen: Vec<(&HeaderName, &HeaderValue)> = stored
        .iter()
        .flat_map(|name| headers.get_all(name).iter().map(move |value| (name, value)))
        .collect();
    let mut out = Vec::with_capacity(5 + body.len() + chosen.len() * 48);
    out.push(FORMAT);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(
        &u16::try_from(chosen.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for (name, value) in chosen.iter().take(usize::from(u16::MAX)) {
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn decode(stored: &[u8]) -> Result<Response<Full<Bytes>>, &'static str> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if input.len() < n {
            return Err("truncated");
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }
    let mut input = stored;
    if take(&mut input, 1)? != [FORMAT] {
        return Err("unknown format");
    }
    let status = u16::from_be_bytes([take(&mut input, 1)?[0], take(&mut input, 1)?[0]]);
    let status = StatusCode::from_u16(status).map_err(|_| "bad status")?;
    let count = u16::from_be_bytes([take(&mut input, 1)?[0], take(&mut input, 1)?[0]]);
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = take(&mut input, 2)?;
        let name = take(
            &mut input,
            usize::from(u16::from_be_bytes([len[0], len[1]])),
        )?;
        let len = take(&mut input, 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let value = take(&mut input, usize::try_from(len).map_err(|_| "bad length")?)?;
        headers.append(
            HeaderName::from_bytes(name).map_err(|_| "bad header name")?,
            HeaderValue::from_bytes(value).map_err(|_| "bad header value")?,
        );
    }
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(input)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.append(LOCATION, HeaderValue::from_static("/orders/7"));
        headers.insert("set-cookie", HeaderValue::from_static("session=secret"));
        let stored = encode(
            StatusCode::CREATED,
            &headers,
            &[CONTENT_TYPE, LOCATION, ETAG],
            b"{\"id\":7}",
        );
        let response = decode(&stored).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers().len(), 2, "only the chosen headers");
        assert_eq!(response.headers()[LOCATION], "/orders/7");
        assert!(
            decode(&stored[..stored.len() - 8]).unwrap().headers().len() == 2,
            "body may be empty"
        );
        assert!(decode(&stored[..4]).is_err());
        assert!(decode(b"\x09").is_err());
    }
}

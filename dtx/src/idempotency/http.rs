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
//! | a duplicate while the first is in flight | 409 with `Retry-After` |
//! | the key with another payload (method, path and query, body) | 422 |
//! | the store is unavailable | 503 with `Retry-After` (the handler does not run) |
//!
//! Keys are scoped by the principal the caller-supplied extractor returns, so two clients never
//! replay each other's responses, whatever keys they choose. A response the policy does not
//! cache (by default 5xx: the failure may be transient) releases the key, so a retry runs the
//! handler again. Once claimed, the handler runs to completion and its outcome is stored even
//! if the client disconnects, so the client's retry gets it. Keys and bodies never reach logs
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
use crate::error::BoxError;
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

struct Config {
    store: SharedIdempotencyStore,
    principal: Box<PrincipalFn>,
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
                principal: Box::new(principal),
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

    fn edit(mut self, change: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.config) {
            Some(config) => change(config),
            None => unreachable!("a layer is configured before it is cloned"),
        }
        self
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

    #[expect(
        clippy::too_many_lines,
        reason = "one pass through the draft's cases, in the order a request meets them"
    )]
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
            let request = ClaimRequest::new(scope, key, fingerprint).with_policy(config.policy);
            let digest = request.digest();
            let claim = match super::traced_claim(&*config.store, &request).await {
                Ok(claim) => claim,
                Err(error) => {
                    tracing::warn!(key = %digest, %error, "idempotency store unavailable; refusing the request");
                    let mut response = config.problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Idempotency store unavailable",
                        "the request was not processed; retry it with the same Idempotency-Key",
                    );
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    return Ok(response.map(Either::Right));
                }
            };
            match claim {
                Claim::Claimed(lease) => {
                    tracing::debug!(key = %digest, "idempotency key claimed");
                    let request = Request::from_parts(parts, ReqBody::from(body));
                    // Run to completion even if the client goes away, so its retry gets the
                    // outcome instead of running the handler again.
                    let task = tokio::spawn(run(Arc::clone(&config), inner, request, lease));
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
                }
                Claim::Completed(stored) => match decode(&stored) {
                    Ok(mut response) => {
                        tracing::debug!(key = %digest, "idempotent response replayed");
                        crate::telemetry::record_idempotency_replay();
                        response
                            .headers_mut()
                            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                        Ok(response.map(Either::Right))
                    }
                    Err(reason) => {
                        tracing::error!(key = %digest, reason, "stored idempotent response does not decode");
                        Ok(config
                            .problem(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "Stored response unreadable",
                                "the response stored for this Idempotency-Key cannot be replayed",
                            )
                            .map(Either::Right))
                    }
                },
                Claim::InFlight { locked_until } => {
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
                    Ok(response.map(Either::Right))
                }
                Claim::Mismatch => {
                    tracing::debug!(key = %digest, "idempotency key reused with another payload");
                    crate::telemetry::record_idempotency_conflict("key_reused");
                    Ok(config
                        .problem(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Idempotency-Key is already used",
                            "this key was used with another request payload; use a new key for a new request",
                        )
                        .map(Either::Right))
                }
            }
        })
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

/// Runs the handler for a claimed key and stores (or releases) its outcome.
async fn run<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqBody>,
    lease: Lease,
) -> Result<Response<Full<Bytes>>, S::Error>
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
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(Into::<BoxError>::into);
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::warn!(key = %digest, %error, "handler's response body failed; key released");
            guard.release().await;
            return Ok(config.problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Response failed",
                "the response body could not be produced",
            ));
        }
    };
    let response = Response::from_parts(parts, Full::new(body.clone()));
    if !(config.cache_status)(response.status()) {
        tracing::debug!(key = %digest, status = response.status().as_u16(), "outcome not cached; key released");
        guard.release().await;
        return Ok(response);
    }
    let stored = encode(
        response.status(),
        response.headers(),
        &config.stored_headers,
        &body,
    );
    match config.store.complete(&lease, &stored).await {
        Ok(()) => guard.disarm(),
        Err(error @ IdempotencyError::ResponseTooLarge { .. }) => {
            tracing::warn!(key = %digest, %error, "response too large to store; key released");
            guard.release().await;
        }
        Err(error) => {
            tracing::warn!(key = %digest, %error, "response not stored");
            guard.disarm();
        }
    }
    Ok(response)
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

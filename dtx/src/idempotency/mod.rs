//! Idempotency keys: a retried request or call runs once, and every retry gets the first
//! outcome back.
//!
//! An [`IdempotencyStore`] keeps one record per **(scope, key)**: the scope is the caller's
//! principal or tenant (so two clients can never replay each other's results, whatever keys
//! they pick), the key is the client's [`IdempotencyKey`]. Each record holds a [`Fingerprint`]
//! of the request, its status (in progress / completed), the stored result, and its creation and
//! expiry times.
//!
//! A caller [claims](IdempotencyStore::claim) a key before doing the work and gets one of four
//! answers ([`Claim`]):
//!
//! | answer | meaning | HTTP ([`http`], feature `http`) |
//! |---|---|---|
//! | [`Claim::Claimed`] | first request (or the record expired, or its holder's lock timed out): do the work, then [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release) | the handler runs |
//! | [`Claim::Completed`] | a retry: here is the stored result | the stored response, with `Idempotent-Replayed: true` |
//! | [`Claim::InFlight`] | the first request is still running | 409 |
//! | [`Claim::Mismatch`] | the key was used with another request payload | 422 |
//!
//! A claim holds an in-progress **lock with its own timeout** ([`IdempotencyPolicy::lock_timeout`]):
//! if its holder crashes, the key is free again once the lock times out, never locked for good.
//! Records expire after [`IdempotencyPolicy::ttl`] (`IDEMPOTENCY_TTL_HOURS`, default 24); an
//! expired record is as good as absent, and [`IdempotencyStore::cleanup_expired`] deletes them
//! in bounded batches.
//!
//! Three ways to use it:
//!
//! - `#[dtx::idempotent]` on an async fn: the result is stored (serialised with `serde_json`),
//!   a retry returns it without running the body, and concurrent duplicates wait for the first;
//! - the [`http::IdempotencyLayer`] (feature `http`) for axum and other `tower` services,
//!   following the IETF `Idempotency-Key` draft;
//! - the store directly, e.g. `dtx_postgres::PgIdempotencyStore::claim_in`, which claims and
//!   completes a key **in the transaction that appends the command's events**, so the stored
//!   result and the state change commit or roll back together.
//!
//! ## Key format
//!
//! A key is 1 to 255 characters (Unicode scalar values) without control characters
//! (U+0000–U+001F, U+007F–U+009F). Over HTTP a key is also limited to visible ASCII and spaces
//! by HTTP itself, and may be sent as a Structured Field string (`"…"`, as the draft writes it)
//! or bare (as most clients send it). Use a random UUID. A key that does not match is rejected
//! before any lookup.
//!
//! Keys, scopes and stored results never appear in logs, spans or error messages: those name
//! a key by a short hash ([`KeyDigest`]).

mod call;
#[cfg(feature = "http")]
pub mod http;
mod memory;

pub use call::{AlreadyInstalled, IdempotentCall, install, installed, run_once};
#[doc(hidden)]
pub use call::{ResultCodec, run_with};
pub use memory::MemoryIdempotencyStore;

use crate::config::DtxConfig;
use crate::error::BoxError;
use crate::uow::UnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The largest stored result or response a backend accepts by default: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A client-chosen idempotency key: 1 to [`IdempotencyKey::MAX_CHARS`] characters, no control
/// characters (see the [module docs](self#key-format)).
///
/// Its `Debug` output is a [`KeyDigest`], never the key itself.
///
/// ```
/// use dtx::idempotency::IdempotencyKey;
/// assert!(IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").is_ok());
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("a\nb").is_err());
/// assert!(IdempotencyKey::new("k".repeat(256)).is_err());
/// // The Structured Field string form of the IETF draft, and the bare form.
/// assert_eq!(IdempotencyKey::from_header_value(r#""abc-1""#)?.as_str(), "abc-1");
/// assert_eq!(IdempotencyKey::from_header_value("abc-1")?.as_str(), "abc-1");
/// # Ok::<(), dtx::idempotency::InvalidKey>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The longest key accepted, in characters (Stripe's limit).
    pub const MAX_CHARS: usize = 255;

    /// Validates a key.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key: String = key.into();
        check("idempotency key", &key)?;
        Ok(Self(key.into()))
    }

    /// Parses the value of an `Idempotency-Key` header: an RFC 8941 string (`"…"`, with `\"`
    /// and `\\` escapes) or the bare key, surrounding spaces ignored.
    pub fn from_header_value(value: &str) -> Result<Self, InvalidKey> {
        let value = value.trim_matches([' ', '\t']);
        let Some(quoted) = value.strip_prefix('"') else {
            return Self::new(value);
        };
        let malformed = InvalidKey {
            what: "idempotency key",
            reason: "a quoted key must be one Structured Field string: `\"…\"`",
            chars: value.chars().count(),
        };
        let mut key = String::with_capacity(quoted.len());
        let mut chars = quoted.chars();
        loop {
            match chars.next() {
                None => return Err(malformed),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\')) => key.push(c),
                    _ => return Err(malformed),
                },
                Some(c) => key.push(c),
            }
        }
        if chars.next().is_some() {
            return Err(malformed);
        }
        Self::new(key)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", KeyDigest::of("", self.as_str()))
    }
}

/// Whose key it is: the authenticated principal or tenant. Part of the unique key of every
/// record, so equal keys of two scopes never meet.
///
/// Same format as [`IdempotencyKey`]; its `Debug` output is a hash.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Validates a scope.
    pub fn new(scope: impl Into<String>) -> Result<Self, InvalidKey> {
        let scope: String = scope.into();
        check("idempotency scope", &scope)?;
        Ok(Self(scope.into()))
    }

    /// The scope.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", KeyDigest::of(self.as_str(), ""))
    }
}

fn check(what: &'static str, value: &str) -> Result<(), InvalidKey> {
    let chars = value.chars().count();
    let reason = if chars == 0 {
        "must not be empty"
    } else if chars > IdempotencyKey::MAX_CHARS {
        "is longer than 255 characters"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(InvalidKey {
        what,
        reason,
        chars,
    })
}

/// A key or scope that does not match the published format. The value itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} ({chars} characters): {reason}; expected 1 to 255 characters without control characters"
)]
pub struct InvalidKey {
    /// `idempotency key` or `idempotency scope`.
    pub what: &'static str,
    /// Why it was rejected.
    pub reason: &'static str,
    /// Its length in characters.
    pub chars: usize,
}

/// A short hash naming a (scope, key) pair in logs and errors without revealing either.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(u64);

impl KeyDigest {
    /// The digest of a scope and key.
    pub fn of(scope: &str, key: &str) -> Self {
        let hash = Fingerprint::builder()
            .part(scope.as_bytes())
            .part(key.as_bytes())
            .finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.0[..8]);
        Self(u64::from_be_bytes(first))
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{:016x}", self.0)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The SHA-256 of what identifies a request's payload. A key reused with another fingerprint is
/// [`Claim::Mismatch`] (HTTP 422).
///
/// ```
/// use dtx::idempotency::Fingerprint;
/// let a = Fingerprint::builder().part(b"POST").part(b"/orders").part(br#"{"qty":1}"#).finish();
/// let b = Fingerprint::builder().part(b"POST").part(b"/orders").part(br#"{"qty":2}"#).finish();
/// assert_ne!(a, b);
/// // Parts are length-prefixed: moving bytes between parts changes the fingerprint.
/// assert_ne!(Fingerprint::builder().part(b"ab").part(b"c").finish(),
///            Fingerprint::builder().part(b"a").part(b"bc").finish());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one byte string.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The fingerprint of a value's JSON.
    pub fn of_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let mut hasher = Sha256::new();
        serde_json::to_writer(HashWriter(&mut hasher), value)?;
        Ok(Self(hasher.finalize().into()))
    }

    /// A fingerprint of several parts (method, path, body, ...), each length-prefixed.
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder(Sha256::new())
    }

    /// A fingerprint read back from storage.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds a [`Fingerprint`] from parts; see [`Fingerprint::builder`].
#[derive(Clone)]
pub struct FingerprintBuilder(Sha256);

impl FingerprintBuilder {
    /// Adds one part.
    #[must_use]
    pub fn part(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The fingerprint.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintBuilder")
    }
}

/// How long records live and how long a claim's lock holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyPolicy {
    /// How long a record (and the result it stores) is kept: a key reused after that runs
    /// again. Default: 24 hours (`IDEMPOTENCY_TTL_HOURS`).
    pub ttl: Duration,
    /// How long a claim stays locked without completing: after that, the holder is presumed
    /// dead and the next claim takes the key over. Default: 60 seconds. Set it above the
    /// slowest legitimate run: a holder still running when its lock times out may see its
    /// result refused ([`IdempotencyError::LeaseLost`]) and the work run twice.
    pub lock_timeout: Duration,
}

impl Default for IdempotencyPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            lock_timeout: Duration::from_secs(60),
        }
    }
}

impl IdempotencyPolicy {
    /// The default policy with the TTL of `IDEMPOTENCY_TTL_HOURS`.
    pub fn from_config(config: &DtxConfig) -> Self {
        Self {
            ttl: config.idempotency_ttl(),
            ..Self::default()
        }
    }

    /// Sets the TTL.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the lock timeout.
    #[must_use]
    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }
}

/// What [`IdempotencyStore::claim`] is asked: this key, in this scope, for a request with this
/// fingerprint.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The principal or tenant.
    pub scope: Scope,
    /// The client's key.
    pub key: IdempotencyKey,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// TTL and lock timeout of the record, if this claim creates it.
    pub policy: IdempotencyPolicy,
}

impl ClaimRequest {
    /// A claim with the default [`IdempotencyPolicy`].
    pub fn new(scope: Scope, key: IdempotencyKey, fingerprint: Fingerprint) -> Self {
        Self {
            scope,
            key,
            fingerprint,
            policy: IdempotencyPolicy::default(),
        }
    }

    /// Sets the policy.
    #[must_use]
    pub fn with_policy(mut self, policy: IdempotencyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The TTL to store, at least 1 ms.
    pub fn ttl(&self) -> Duration {
        self.policy.ttl.max(Duration::from_millis(1))
    }

    /// The lock timeout to store: at least 1 ms, at most the TTL.
    pub fn lock_timeout(&self) -> Duration {
        self.policy
            .lock_timeout
            .max(Duration::from_millis(1))
            .min(self.ttl())
    }

    /// The digest naming this key in logs.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(self.scope.as_str(), self.key.as_str())
    }
}

/// The answer to a claim.
#[derive(Debug, Clone)]
#[must_use = "a claim must be acted on: run and complete, replay, or refuse"]
pub enum Claim {
    /// The caller holds the key: do the work, then [`IdempotencyStore::complete`] or
    /// [`IdempotencyStore::release`].
    Claimed(Lease),
    /// A retry of completed work: the stored result.
    Completed(Vec<u8>),
    /// Another caller holds the key and its lock has not timed out.
    InFlight {
        /// When its lock times out (unless it completes or releases first).
        locked_until: DateTime<Utc>,
    },
    /// The key was used with another fingerprint (and has not expired).
    Mismatch,
}

/// Claims a key inside a `dtx.idempotency.claim` span that records the outcome (`claimed`,
/// `replay`, `in_flight`, `mismatch`, `error`) and the key's digest — never the key itself.
pub(crate) async fn traced_claim<S: IdempotencyStore + ?Sized>(
    store: &S,
    request: &ClaimRequest,
) -> Result<Claim, IdempotencyError> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "dtx.idempotency.claim",
        key = %request.digest(),
        outcome = tracing::field::Empty,
    );
    let claim = store.claim(request).instrument(span.clone()).await;
    span.record(
        "outcome",
        match &claim {
            Ok(Claim::Claimed(_)) => "claimed",
            Ok(Claim::Completed(_)) => "replay",
            Ok(Claim::InFlight { .. }) => "in_flight",
            Ok(Claim::Mismatch) => "mismatch",
            Err(_) => "error",
        },
    );
    claim
}

/// Proof of a claim: completes or releases the record only while it is still this claim's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    scope: Scope,
    key: IdempotencyKey,
    token: Uuid,
    locked_until: DateTime<Utc>,
}

impl Lease {
    /// A lease, for backends.
    pub fn new(
        scope: Scope,
        key: IdempotencyKey,
        token: Uuid,
        locked_until: DateTime<Utc>,
    ) -> Self {
        Self {
            scope,
            key,
            token,
            locked_until,
        }
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The claim's unique token.
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// When the lock times out.
    pub fn locked_until(&self) -> DateTime<Utc> {
        self.locked_until
    }

    /// The digest naming this key in logs.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(self.scope.as_str(), self.key.as_str())
    }
}

/// Whether a record's work is running or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyStatus {
    /// Claimed, not completed.
    InProgress,
    /// Completed; the result is stored.
    Completed,
}

/// A stored record, as [`IdempotencyStore::load`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The scope.
    pub scope: Scope,
    /// The key.
    pub key: IdempotencyKey,
    /// The fingerprint of the request that claimed it.
    pub fingerprint: Fingerprint,
    /// In progress or completed.
    pub status: IdempotencyStatus,
    /// The stored result (completed records).
    pub response: Option<Vec<u8>>,
    /// When the current claim created (or took over) the record.
    pub created_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// When an in-progress record's lock times out.
    pub locked_until: Option<DateTime<Utc>>,
    /// When it was completed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Everything that can go wrong with idempotency keys; keys are named by [`KeyDigest`] only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The key or scope does not match the published format.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// The result is larger than the store accepts; nothing was stored and the claim is still
    /// held.
    #[error("the result for {key} is {bytes} bytes; the store accepts at most {max}")]
    ResponseTooLarge {
        /// The key.
        key: KeyDigest,
        /// The result's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The claim is no longer this caller's: its lock timed out and another caller took the
    /// key over, or it was completed or released already. Nothing was changed.
    #[error(
        "the claim on {key} was lost (lock timed out and taken over, or already completed or released)"
    )]
    LeaseLost {
        /// The key.
        key: KeyDigest,
    },
    /// Another call with this key is still running and did not finish in time.
    #[error("another call with {key} is still in progress (locked until {locked_until})")]
    InFlight {
        /// The key.
        key: KeyDigest,
        /// When its lock times out.
        locked_until: DateTime<Utc>,
    },
    /// The key was used before with another request payload.
    #[error("{key} was already used with another request payload")]
    KeyReused {
        /// The key.
        key: KeyDigest,
    },
    /// A result could not be serialised or the stored one decoded.
    #[error("cannot encode or decode the stored result for {key}: {source}")]
    Codec {
        /// The key.
        key: KeyDigest,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The storage backend failed.
    #[error("idempotency storage error: {0}")]
    Storage(#[source] BoxError),
}

impl IdempotencyError {
    /// Wraps a backend error.
    pub fn storage(error: impl Into<BoxError>) -> Self {
        Self::Storage(error.into())
    }
}

/// Storage of idempotency records.
///
/// Backends: [`MemoryIdempotencyStore`] (embedded default) and
/// `dtx_postgres::PgIdempotencyStore`. Both pass the contract suite in
/// `dtx::testing::idempotency` (feature `testing`), which a third-party backend can run too with
/// [`idempotency_store_contract_tests!`](crate::idempotency_store_contract_tests).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an idempotency store",
    label = "expected a `dtx::idempotency::IdempotencyStore`",
    note = "use `dtx::idempotency::MemoryIdempotencyStore`, `dtx_postgres::PgIdempotencyStore`, or an `Arc` of one"
)]
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims a key, atomically: creates an in-progress record, or takes over one that expired
    /// or whose lock timed out (same fingerprint), or reports the stored result, the running
    /// claim, or a fingerprint mismatch. Of concurrent claims of a free key exactly one wins.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, IdempotencyError>;

    /// Stores the result of a claim and marks it completed. [`IdempotencyError::LeaseLost`] if
    /// the claim is no longer the lease's; [`IdempotencyError::ResponseTooLarge`] (nothing
    /// changed) above the backend's limit.
    async fn complete(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError>;

    /// Gives a claim up without a result (the work failed and may be retried): the record is
    /// deleted. Releasing a lease that was lost is a no-op.
    async fn release(&self, lease: &Lease) -> Result<(), IdempotencyError>;

    /// The record of a key, expired or not.
    async fn load(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, IdempotencyError>;

    /// Deletes up to `limit` expired records (oldest first) and returns how many; call it
    /// periodically (see [`spawn_cleanup`]). Records whose lock is still held are kept.
    async fn cleanup_expired(&self, limit: usize) -> Result<usize, IdempotencyError>;

    /// [`IdempotencyStore::claim`] as part of a unit of work, which then writes the work's
    /// effects and [`complete_in`](IdempotencyStore::complete_in) the record.
    ///
    /// The claim holds the key while the unit of work runs (a concurrent claim of the key sees
    /// it in flight, or on PostgreSQL waits for the commit); a unit of work that rolls back
    /// leaves the key free. The default refuses ([`crate::Error::UnitOfWork`]).
    async fn claim_in(
        &self,
        uow: &mut dyn UnitOfWork,
        request: &ClaimRequest,
    ) -> Result<Claim, IdempotencyError> {
        let _ = request;
        Err(IdempotencyError::storage(crate::Error::UnitOfWork {
            expected: std::any::type_name::<Self>(),
            actual: uow.backend(),
        }))
    }

    /// [`IdempotencyStore::complete`] as part of a unit of work: the result is stored when the
    /// unit of work commits. A lease lost by then fails the commit.
    async fn complete_in(
        &self,
        uow: &mut dyn UnitOfWork,
        lease: &Lease,
        response: &[u8],
    ) -> Result<(), IdempotencyError> {
        let _ = (lease, response);
        Err(IdempotencyError::storage(crate::Error::UnitOfWork {
            expected: std::any::type_name::<Self>(),
            actual: uow.backend(),
        }))
    }
}

/// A shareable, type-erased idempotency store.
pub type SharedIdempotencyStore = Arc<dyn IdempotencyStore>;

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for Arc<S> {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, IdempotencyError> {
        (**self).claim(request).await
    }

    async fn complete(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError> {
        (**self).complete(lease, response).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), IdempotencyError> {
        (**self).release(lease).await
    }

    async fn load(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        (**self).load(scope, key).await
    }

    async fn cleanup_expired(&self, limit: usize) -> Result<usize, IdempotencyError> {
        (**self).cleanup_expired(limit).await
    }

    async fn claim_in(
        &self,
        uow: &mut dyn UnitOfWork,
        request: &ClaimRequest,
    ) -> Result<Claim, IdempotencyError> {
        (**self).claim_in(uow, request).await
    }

    async fn complete_in(
        &self,
        uow: &mut dyn UnitOfWork,
        lease: &Lease,
        response: &[u8],
    ) -> Result<(), IdempotencyError> {
        (**self).complete_in(uow, lease, response).await
    }
}

/// Deletes expired records every `every`, up to `batch` per round (more rounds follow at once
/// while full batches come back). Errors are logged and retried next round.
pub fn spawn_cleanup(
    store: SharedIdempotencyStore,
    every: Duration,
    batch: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            loop {
                match store.cleanup_expired(batch).await {
                    Ok(deleted) if deleted >= batch && batch > 0 => {}
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "idempotency cleanup failed");
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_published_format() {
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::new("k".repeat(256)).unwrap_err().reason,
            "is longer than 255 characters"
        );
        assert!(
            IdempotencyKey::new("é".repeat(255)).is_ok(),
            "characters, not bytes"
        );
        assert!(IdempotencyKey::new("a\u{7f}").is_err());
        assert!(IdempotencyKey::new("a\u{85}").is_err());
        assert!(
            IdempotencyKey::from_header_value(r#""a\"b""#)
                .unwrap()
                .as_str()
                == "a\"b"
        );
        for bad in [r#""open"#, r#""a" b"#, r#""a\x""#, r#""""#, "   "] {
            assert!(IdempotencyKey::from_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = IdempotencyKey::new("secret-key-material").unwrap();
        let scope = Scope::new("tenant-secret").unwrap();
        let shown = format!("{key:?} {scope:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let error = IdempotencyKey::new("secret\n").unwrap_err().to_string();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn lock_timeout_is_bounded_by_the_ttl() {
        let request = ClaimRequest::new(
            Scope::new("s").unwrap(),
            IdempotencyKey::new("k").unwrap(),
            Fingerprint::of(b""),
        )
        .with_policy(IdempotencyPolicy {
            ttl: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(5),
        });
        assert_eq!(request.lock_timeout(), Duration::from_secs(1));
    }
}

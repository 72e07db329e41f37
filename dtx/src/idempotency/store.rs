//! The store: policies, claims, leases, records, errors, and the [`IdempotencyStore`] trait.

use super::{Fingerprint, IdempotencyKey, InvalidKey, KeyDigest, Scope};
use crate::config::DtxConfig;
use crate::error::BoxError;
use crate::uow::UnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

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
    uow: Option<&mut dyn UnitOfWork>,
) -> Result<Claim, IdempotencyError> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "dtx.idempotency.claim",
        key = %request.digest(),
        outcome = tracing::field::Empty,
    );
    let claim = match uow {
        Some(uow) => store.claim_in(uow, request).instrument(span.clone()).await,
        None => store.claim(request).instrument(span.clone()).await,
    };
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
/// Backends: [`MemoryIdempotencyStore`](super::MemoryIdempotencyStore) (embedded default) and
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
        Err(IdempotencyError::storage(crate::uow::refused::<Self>(uow)))
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
        Err(IdempotencyError::storage(crate::uow::refused::<Self>(uow)))
    }

    /// Begins a unit of work that this store's records can be claimed in
    /// ([`claim_in`](IdempotencyStore::claim_in)), for work that commits together with its
    /// idempotency record — the one-commit mode of the HTTP layer. `Ok(None)` when the store
    /// cannot join units of work (the default).
    ///
    /// `lock_wait` bounds how long any statement of that unit of work waits for a lock (on
    /// PostgreSQL its `lock_timeout`): a duplicate that waits for the holder's commit gives up
    /// after it, with [`Claim::InFlight`].
    async fn begin(
        &self,
        lock_wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, IdempotencyError> {
        let _ = lock_wait;
        Ok(None)
    }

    /// Begins a unit of work that stores this request's record **when it commits**, completed
    /// with the response given to [`complete_in`](IdempotencyStore::complete_in), without
    /// claiming the key first: the one-commit mode of the HTTP layer on stores that can
    /// (`dtx_postgres::PgIdempotencyStore`, where the work and the record are then one
    /// statement). The lease returned is for [`complete_in`](IdempotencyStore::complete_in)
    /// only; nothing holds the key before the commit.
    ///
    /// The commit fails, and writes nothing, when the key has a record by then (a request
    /// completed it, or one holding it committed meanwhile; it waits up to `lock_wait` for a
    /// request that holds it): the caller then claims the key as usual (which replays it).
    /// `Ok(None)` when the store cannot (the default); use
    /// [`begin`](IdempotencyStore::begin) and [`claim_in`](IdempotencyStore::claim_in) then.
    async fn begin_deferred(
        &self,
        request: &ClaimRequest,
        lock_wait: Duration,
    ) -> Result<Option<(Box<dyn UnitOfWork>, Lease)>, IdempotencyError> {
        let _ = (request, lock_wait);
        Ok(None)
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

    async fn begin(
        &self,
        lock_wait: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, IdempotencyError> {
        (**self).begin(lock_wait).await
    }

    async fn begin_deferred(
        &self,
        request: &ClaimRequest,
        lock_wait: Duration,
    ) -> Result<Option<(Box<dyn UnitOfWork>, Lease)>, IdempotencyError> {
        (**self).begin_deferred(request, lock_wait).await
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

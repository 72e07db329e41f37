//! Idempotent function calls: the runtime of `#[idempotent]`, and [`run_once`] for code that
//! does without the macro.

use super::{
    Claim, ClaimRequest, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyPolicy,
    IdempotencyStore, KeyDigest, MemoryIdempotencyStore, Scope, SharedIdempotencyStore,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static INSTALLED: OnceLock<SharedIdempotencyStore> = OnceLock::new();
static DEFAULT_POLICY: OnceLock<IdempotencyPolicy> = OnceLock::new();

/// Installs the process-wide store that `#[idempotent]` functions without a `store = ..`
/// option use (e.g. a `dtx_postgres::PgIdempotencyStore`, so results survive restarts and are
/// shared by every instance). Call it once at start-up, before the first idempotent call: until
/// then, and when nothing is installed, the process uses a [`MemoryIdempotencyStore`].
///
/// ```
/// use dtx::idempotency::{MemoryIdempotencyStore, install};
/// install(MemoryIdempotencyStore::new()).expect("first install");
/// assert!(install(MemoryIdempotencyStore::new()).is_err(), "only once");
/// ```
pub fn install(store: impl IdempotencyStore) -> Result<(), AlreadyInstalled> {
    INSTALLED.set(Arc::new(store)).map_err(|_| AlreadyInstalled)
}

/// The process-wide store: the one [`install`]ed, or an in-memory one.
pub fn installed() -> &'static SharedIdempotencyStore {
    INSTALLED.get_or_init(|| Arc::new(MemoryIdempotencyStore::new()))
}

/// [`install`] was called after a store was installed or the default was already in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "an idempotency store is already installed (or an idempotent call already used the default one): install it once, at start-up"
)]
pub struct AlreadyInstalled;

/// The policy of calls that set no TTL: the default, with the TTL of `IDEMPOTENCY_TTL_HOURS`
/// read once from the environment.
pub(crate) fn default_policy() -> IdempotencyPolicy {
    *DEFAULT_POLICY.get_or_init(|| match crate::DtxConfig::from_env() {
        Ok(config) => IdempotencyPolicy::from_config(&config),
        Err(error) => {
            tracing::warn!(%error, "using the default idempotency TTL");
            IdempotencyPolicy::default()
        }
    })
}

/// One idempotent call: which function, which key, and how long its record lives.
#[derive(Debug, Clone)]
pub struct IdempotentCall {
    /// The function's path; with [`IdempotentCall::scope`] it makes the record's scope, so two
    /// functions never share results.
    pub function: &'static str,
    /// A further scope (tenant, principal), appended to the function's path.
    pub scope: Option<String>,
    /// The key.
    pub key: String,
    /// The request's fingerprint: a key reused with another is refused
    /// ([`IdempotencyError::KeyReused`]). `None`: the key alone identifies the call.
    pub fingerprint: Option<Fingerprint>,
    /// TTL and lock timeout; `None`: the defaults (TTL from `IDEMPOTENCY_TTL_HOURS`).
    pub ttl: Option<Duration>,
    /// How long a claim stays locked; `None`: [`IdempotencyPolicy::default`]'s.
    pub lock_timeout: Option<Duration>,
}

impl IdempotentCall {
    /// A call of `function` with `key`, default scope, fingerprint and policy.
    pub fn new(function: &'static str, key: impl Into<String>) -> Self {
        Self {
            function,
            scope: None,
            key: key.into(),
            fingerprint: None,
            ttl: None,
            lock_timeout: None,
        }
    }

    fn request(&self) -> Result<ClaimRequest, IdempotencyError> {
        let scope = match &self.scope {
            Some(extra) => Scope::new(format!("{}@{extra}", self.function))?,
            None => Scope::new(self.function)?,
        };
        let key = IdempotencyKey::new(self.key.as_str())?;
        let mut policy = default_policy();
        if let Some(ttl) = self.ttl {
            policy.ttl = ttl;
        }
        if let Some(lock_timeout) = self.lock_timeout {
            policy.lock_timeout = lock_timeout;
        }
        let fingerprint = self
            .fingerprint
            .unwrap_or_else(|| Fingerprint::of(self.function.as_bytes()));
        Ok(ClaimRequest::new(scope, key, fingerprint).with_policy(policy))
    }
}

/// Runs `body` once per key: the first call runs it and stores an `Ok` value (serialised with
/// `serde_json`); a later call with the key returns the stored value without running `body`;
/// a concurrent call waits for the first (up to its lock timeout, then takes over). An `Err`
/// is not stored: the key is released and the next call runs `body` again.
///
/// Store failures, an invalid key, a key reused with another fingerprint, and a wait that
/// outlasts the lock timeout are reported through `E`. If the `Ok` value cannot be stored (too
/// large, or the claim was lost), it is still returned, and the failure logged.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::idempotency::{IdempotencyError, IdempotentCall, MemoryIdempotencyStore, run_once};
///
/// let store = MemoryIdempotencyStore::new();
/// let mut runs = 0;
/// for _ in 0..3 {
///     let receipt: Result<u32, IdempotencyError> =
///         run_once(&store, IdempotentCall::new("billing::charge", "order-17"), async {
///             runs += 1;
///             Ok(42)
///         })
///         .await;
///     assert_eq!(receipt?, 42);
/// }
/// assert_eq!(runs, 1);
/// # Ok::<(), IdempotencyError>(())
/// # }).unwrap();
/// ```
pub async fn run_once<S, T, E, F>(store: &S, call: IdempotentCall, body: F) -> Result<T, E>
where
    S: IdempotencyStore + ?Sized,
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<IdempotencyError>,
    F: Future<Output = Result<T, E>>,
{
    run_with(store, call, ResultCodec::<T, E>::new(), body).await
}

/// How [`run_with`] stores, reads and reports: built where the serde and `From` bounds are
/// known, so the generated code of `#[idempotent]` checks them once, under the return type.
#[doc(hidden)]
pub struct ResultCodec<T, E> {
    encode: fn(&T) -> Result<Vec<u8>, serde_json::Error>,
    decode: fn(&[u8]) -> Result<T, serde_json::Error>,
    error: fn(IdempotencyError) -> E,
}

impl<T, E> Clone for ResultCodec<T, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, E> Copy for ResultCodec<T, E> {}

impl<T, E> Default for ResultCodec<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<IdempotencyError>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> ResultCodec<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<IdempotencyError>,
{
    /// The codec of `Result<T, E>`.
    pub fn new() -> Self {
        Self {
            encode: |value| serde_json::to_vec(value),
            decode: |bytes| serde_json::from_slice(bytes),
            error: E::from,
        }
    }
}

/// [`run_once`] with the codec given.
#[doc(hidden)]
pub async fn run_with<S, T, E, F>(
    store: &S,
    call: IdempotentCall,
    codec: ResultCodec<T, E>,
    body: F,
) -> Result<T, E>
where
    S: IdempotencyStore + ?Sized,
    F: Future<Output = Result<T, E>>,
{
    let request = call.request().map_err(codec.error)?;
    let digest = request.digest();
    let lease = match wait_for_claim(store, &request, digest)
        .await
        .map_err(codec.error)?
    {
        Claimed::Lease(lease) => lease,
        Claimed::Stored(stored) => {
            tracing::debug!(key = %digest, function = call.function, "idempotent call replayed");
            return (codec.decode)(&stored).map_err(|source| {
                (codec.error)(IdempotencyError::Codec {
                    key: digest,
                    source,
                })
            });
        }
    };
    match body.await {
        Ok(value) => {
            match (codec.encode)(&value) {
                Ok(encoded) => {
                    if let Err(error) = store.complete(&lease, &encoded).await {
                        tracing::warn!(key = %digest, function = call.function, %error,
                            "idempotent call succeeded but its result was not stored");
                        if matches!(error, IdempotencyError::ResponseTooLarge { .. }) {
                            release(store, &lease, digest).await;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %digest, function = call.function, %error,
                        "idempotent call succeeded but its result cannot be serialised");
                    release(store, &lease, digest).await;
                }
            }
            Ok(value)
        }
        Err(error) => {
            release(store, &lease, digest).await;
            Err(error)
        }
    }
}

enum Claimed {
    Lease(super::Lease),
    Stored(Vec<u8>),
}

/// Claims the key, waiting while another call holds it: the holder completes (a replay),
/// releases (this call runs), or its lock times out (this call takes over).
async fn wait_for_claim<S: IdempotencyStore + ?Sized>(
    store: &S,
    request: &ClaimRequest,
    digest: KeyDigest,
) -> Result<Claimed, IdempotencyError> {
    let deadline = Instant::now() + request.lock_timeout() + Duration::from_secs(1);
    let mut delay = Duration::from_millis(2);
    loop {
        match super::traced_claim(store, request, None).await? {
            Claim::Claimed(lease) => return Ok(Claimed::Lease(lease)),
            Claim::Completed(stored) => {
                crate::telemetry::record_idempotency_replay();
                return Ok(Claimed::Stored(stored));
            }
            Claim::Mismatch => {
                crate::telemetry::record_idempotency_conflict("key_reused");
                return Err(IdempotencyError::KeyReused { key: digest });
            }
            Claim::InFlight { locked_until } => {
                if Instant::now() >= deadline {
                    crate::telemetry::record_idempotency_conflict("in_flight");
                    return Err(IdempotencyError::InFlight {
                        key: digest,
                        locked_until,
                    });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
        }
    }
}

async fn release<S: IdempotencyStore + ?Sized>(store: &S, lease: &super::Lease, digest: KeyDigest) {
    if let Err(error) = store.release(lease).await {
        tracing::warn!(key = %digest, %error, "could not release an idempotency key; it frees itself when its lock times out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_only_once() {
        // The only test of this crate touching the process-wide store.
        let _ = installed();
        assert_eq!(
            install(MemoryIdempotencyStore::new()),
            Err(AlreadyInstalled)
        );
    }
}

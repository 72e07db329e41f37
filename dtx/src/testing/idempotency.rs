//! The idempotency-store contract suite (feature `testing`): every backend must pass it.
//!
//! Each function takes a fresh store and panics with a description of the broken promise.
//! [`idempotency_store_contract_tests!`](crate::idempotency_store_contract_tests) turns the
//! suite into `#[tokio::test]` functions for one backend:
//!
//! ```ignore
//! dtx::idempotency_store_contract_tests!(dtx::idempotency::MemoryIdempotencyStore::new());
//! ```
//!
//! The backend must accept results up to [`DEFAULT_MAX_RESPONSE_BYTES`] and refuse larger ones.

use crate::idempotency::{
    Claim, ClaimRequest, DEFAULT_MAX_RESPONSE_BYTES, Fingerprint, IdempotencyError, IdempotencyKey,
    IdempotencyPolicy, IdempotencyStatus, Lease, Scope, SharedIdempotencyStore,
};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Generates one `#[tokio::test]` per contract case; `$store` is an expression (it may
/// `.await`) evaluated once per test that yields a fresh `impl IdempotencyStore`.
#[macro_export]
macro_rules! idempotency_store_contract_tests {
    ($store:expr) => {
        $crate::idempotency_store_contract_tests!(@cases $store;
            claim_complete_replay, in_flight_duplicate, fingerprint_mismatch, scopes_are_separate,
            release_frees_the_key, lock_timeout_takeover, expired_record_runs_again,
            response_size_is_bounded, cleanup_is_bounded, concurrent_claims_one_winner,
            lease_is_single_use);
    };
    (@cases $store:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store: $crate::idempotency::SharedIdempotencyStore =
                    ::std::sync::Arc::new($store);
                $crate::testing::idempotency::$case(store).await;
            }
        )*
    };
}

fn scope(name: &str) -> Scope {
    Scope::new(format!("{name}-{}", Uuid::now_v7())).unwrap()
}

fn key() -> IdempotencyKey {
    IdempotencyKey::new(Uuid::new_v4().to_string()).unwrap()
}

fn request(scope: &Scope, key: &IdempotencyKey, body: &str) -> ClaimRequest {
    ClaimRequest::new(scope.clone(), key.clone(), Fingerprint::of(body.as_bytes()))
}

fn claimed(claim: Claim) -> Lease {
    match claim {
        Claim::Claimed(lease) => lease,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

/// A fresh key is claimed, completed, and every later claim replays the stored result.
pub async fn claim_complete_replay(store: SharedIdempotencyStore) {
    let (s, k) = (scope("replay"), key());
    let req = request(&s, &k, "pay 10");
    assert!(store.load(&s, &k).await.unwrap().is_none());
    let lease = claimed(store.claim(&req).await.unwrap());
    assert_eq!((lease.scope(), lease.key()), (&s, &k));
    let record = store.load(&s, &k).await.unwrap().expect("claimed record");
    assert_eq!(record.status, IdempotencyStatus::InProgress);
    assert_eq!(record.fingerprint, req.fingerprint);
    assert!(record.response.is_none());
    assert!(record.locked_until.is_some_and(|t| t > record.created_at));
    assert!(record.expires_at > record.created_at);

    let result = b"\x00binary result\xff".to_vec();
    store.complete(&lease, &result).await.unwrap();
    for _ in 0..3 {
        match store.claim(&req).await.unwrap() {
            Claim::Completed(stored) => assert_eq!(stored, result),
            other => panic!("expected the stored result, got {other:?}"),
        }
    }
    let record = store.load(&s, &k).await.unwrap().unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed);
    assert_eq!(record.response.as_deref(), Some(&result[..]));
    assert!(record.completed_at.is_some());
    assert!(record.locked_until.is_none());

    // An empty result is a result too.
    let (s2, k2) = (scope("empty"), key());
    let lease = claimed(store.claim(&request(&s2, &k2, "")).await.unwrap());
    store.complete(&lease, b"").await.unwrap();
    assert!(matches!(
        store.claim(&request(&s2, &k2, "")).await.unwrap(),
        Claim::Completed(stored) if stored.is_empty()
    ));
}

/// While the first claim holds the key, duplicates are told it is in flight, until when.
pub async fn in_flight_duplicate(store: SharedIdempotencyStore) {
    let (s, k) = (scope("inflight"), key());
    let req = request(&s, &k, "ship");
    let lease = claimed(store.claim(&req).await.unwrap());
    match store.claim(&req).await.unwrap() {
        Claim::InFlight { locked_until } => {
            let delta = (locked_until - lease.locked_until())
                .num_milliseconds()
                .abs();
            assert!(delta < 5, "reports the holder's lock");
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
    store.complete(&lease, b"shipped").await.unwrap();
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::Completed(_)
    ));
}

/// The same key with another fingerprint is refused, in flight or completed.
pub async fn fingerprint_mismatch(store: SharedIdempotencyStore) {
    let (s, k) = (scope("mismatch"), key());
    let lease = claimed(store.claim(&request(&s, &k, "amount=10")).await.unwrap());
    assert!(matches!(
        store.claim(&request(&s, &k, "amount=99")).await.unwrap(),
        Claim::Mismatch
    ));
    store.complete(&lease, b"ok").await.unwrap();
    assert!(matches!(
        store.claim(&request(&s, &k, "amount=99")).await.unwrap(),
        Claim::Mismatch
    ));
    let record = store.load(&s, &k).await.unwrap().unwrap();
    assert_eq!(
        record.fingerprint,
        Fingerprint::of(b"amount=10"),
        "untouched"
    );
}

/// Equal keys in two scopes are two records: neither sees the other's result.
pub async fn scopes_are_separate(store: SharedIdempotencyStore) {
    let (alice, bob, k) = (scope("alice"), scope("bob"), key());
    let a = claimed(store.claim(&request(&alice, &k, "x")).await.unwrap());
    let b = claimed(store.claim(&request(&bob, &k, "y")).await.unwrap());
    store.complete(&a, b"for alice").await.unwrap();
    store.complete(&b, b"for bob").await.unwrap();
    assert!(
        matches!(store.claim(&request(&alice, &k, "x")).await.unwrap(),
        Claim::Completed(r) if r == b"for alice")
    );
    assert!(
        matches!(store.claim(&request(&bob, &k, "y")).await.unwrap(),
        Claim::Completed(r) if r == b"for bob")
    );
}

/// A released key is free: the next claim runs again. Releasing twice is harmless.
pub async fn release_frees_the_key(store: SharedIdempotencyStore) {
    let (s, k) = (scope("release"), key());
    let req = request(&s, &k, "a");
    let lease = claimed(store.claim(&req).await.unwrap());
    store.release(&lease).await.unwrap();
    assert!(store.load(&s, &k).await.unwrap().is_none());
    store.release(&lease).await.unwrap();
    // After a release even another payload may use the key: nothing was done with it.
    let again = claimed(store.claim(&request(&s, &k, "b")).await.unwrap());
    assert_ne!(again.token(), lease.token());
    assert!(matches!(
        store.complete(&lease, b"late").await,
        Err(IdempotencyError::LeaseLost { .. })
    ));
    store.release(&lease).await.unwrap();
    assert!(
        store.load(&s, &k).await.unwrap().is_some(),
        "a stale lease releases nothing"
    );
}

/// A claim whose holder never finishes is taken over once its lock times out; the old holder
/// can then neither complete nor release it.
pub async fn lock_timeout_takeover(store: SharedIdempotencyStore) {
    let (s, k) = (scope("takeover"), key());
    let policy = IdempotencyPolicy::default().with_lock_timeout(Duration::from_millis(300));
    let req = request(&s, &k, "job").with_policy(policy);
    let crashed = claimed(store.claim(&req).await.unwrap());
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::InFlight { .. }
    ));
    // Another payload is refused even after the lock timed out: the key was used.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        store
            .claim(&request(&s, &k, "other").with_policy(policy))
            .await
            .unwrap(),
        Claim::Mismatch
    ));
    let taker = claimed(store.claim(&req).await.unwrap());
    assert_ne!(taker.token(), crashed.token());
    assert!(taker.locked_until() > crashed.locked_until());
    assert!(matches!(
        store.complete(&crashed, b"stale").await,
        Err(IdempotencyError::LeaseLost { .. })
    ));
    store.release(&crashed).await.unwrap();
    store.complete(&taker, b"fresh").await.unwrap();
    assert!(matches!(store.claim(&req).await.unwrap(),
        Claim::Completed(r) if r == b"fresh"));
}

/// After its TTL a record is as good as absent: the key runs again, with any payload.
pub async fn expired_record_runs_again(store: SharedIdempotencyStore) {
    let (s, k) = (scope("expiry"), key());
    let policy = IdempotencyPolicy {
        ttl: Duration::from_millis(400),
        lock_timeout: Duration::from_millis(200),
    };
    let req = request(&s, &k, "v1").with_policy(policy);
    let lease = claimed(store.claim(&req).await.unwrap());
    store.complete(&lease, b"first").await.unwrap();
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::Completed(_)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = claimed(
        store
            .claim(&request(&s, &k, "v2").with_policy(policy))
            .await
            .unwrap(),
    );
    let record = store.load(&s, &k).await.unwrap().unwrap();
    assert_eq!(record.status, IdempotencyStatus::InProgress);
    assert_eq!(record.fingerprint, Fingerprint::of(b"v2"));
    assert!(record.response.is_none(), "the old result is gone");
    store.complete(&again, b"second").await.unwrap();
}

/// A result over the limit is refused with a typed error; the claim is still held.
pub async fn response_size_is_bounded(store: SharedIdempotencyStore) {
    let (s, k) = (scope("size"), key());
    let lease = claimed(store.claim(&request(&s, &k, "big")).await.unwrap());
    let huge = vec![7u8; DEFAULT_MAX_RESPONSE_BYTES + 1];
    match store.complete(&lease, &huge).await {
        Err(IdempotencyError::ResponseTooLarge { bytes, max, key }) => {
            assert_eq!((bytes, max), (huge.len(), DEFAULT_MAX_RESPONSE_BYTES));
            assert_eq!(key, lease.digest());
        }
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    let record = store.load(&s, &k).await.unwrap().unwrap();
    assert_eq!(
        record.status,
        IdempotencyStatus::InProgress,
        "nothing changed"
    );
    store
        .complete(&lease, &huge[..DEFAULT_MAX_RESPONSE_BYTES])
        .await
        .unwrap();
}

/// Cleanup deletes expired records only, at most `limit` per call, and never a held lock.
pub async fn cleanup_is_bounded(store: SharedIdempotencyStore) {
    let s = scope("cleanup");
    let short = IdempotencyPolicy {
        ttl: Duration::from_millis(200),
        lock_timeout: Duration::from_millis(100),
    };
    let mut expiring = Vec::new();
    for n in 0..5 {
        let k = key();
        let lease = claimed(
            store
                .claim(&request(&s, &k, "x").with_policy(short))
                .await
                .unwrap(),
        );
        if n % 2 == 0 {
            store.complete(&lease, b"done").await.unwrap();
        }
        expiring.push(k);
    }
    let live = key();
    let held = key();
    let lease = claimed(store.claim(&request(&s, &live, "x")).await.unwrap());
    store.complete(&lease, b"keep").await.unwrap();
    let _held = claimed(store.claim(&request(&s, &held, "x")).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Other tests may leave expired records in a shared database: count ours only.
    let mut deleted = 0;
    for _ in 0..100 {
        let n = store.cleanup_expired(3).await.unwrap();
        assert!(n <= 3, "bounded by the limit");
        deleted += n;
        let mut ours = 0;
        for k in &expiring {
            ours += usize::from(store.load(&s, k).await.unwrap().is_some());
        }
        if ours == 0 {
            break;
        }
    }
    assert!(deleted >= expiring.len());
    for k in &expiring {
        assert!(
            store.load(&s, k).await.unwrap().is_none(),
            "expired record deleted"
        );
    }
    assert!(
        store.load(&s, &live).await.unwrap().is_some(),
        "live record kept"
    );
    assert!(
        store.load(&s, &held).await.unwrap().is_some(),
        "held lock kept"
    );
    assert_eq!(store.cleanup_expired(0).await.unwrap(), 0);
}

/// Of many concurrent claims of one free key exactly one wins; all others are in flight.
pub async fn concurrent_claims_one_winner(store: SharedIdempotencyStore) {
    let (s, k) = (scope("race"), key());
    let req = Arc::new(request(&s, &k, "once"));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, req) = (Arc::clone(&store), Arc::clone(&req));
            tokio::spawn(async move { store.claim(&req).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Claimed(_) => winners += 1,
            Claim::InFlight { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one claim wins");
}

/// A lease completes once; completing or releasing again changes nothing.
pub async fn lease_is_single_use(store: SharedIdempotencyStore) {
    let (s, k) = (scope("single"), key());
    let lease = claimed(store.claim(&request(&s, &k, "x")).await.unwrap());
    store.complete(&lease, b"one").await.unwrap();
    assert!(matches!(
        store.complete(&lease, b"two").await,
        Err(IdempotencyError::LeaseLost { .. })
    ));
    store.release(&lease).await.unwrap();
    let record = store.load(&s, &k).await.unwrap().unwrap();
    assert_eq!(record.response.as_deref(), Some(&b"one"[..]));
}

//! `#[idempotent]` functions: replay without running the body, one run for concurrent calls,
//! errors not stored, TTL, fingerprints, scopes, a cancelled holder, and PostgreSQL storage
//! that outlives the store instance.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::idempotency::IdempotencyError;
use dtx::idempotent;
use dtx_postgres::PgIdempotencyStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    run: usize,
    amount: u64,
    id: Uuid,
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
}

fn receipt(runs: &AtomicUsize, amount: u64) -> Receipt {
    Receipt {
        run: runs.fetch_add(1, Ordering::SeqCst) + 1,
        amount,
        id: Uuid::new_v4(),
    }
}

static CHARGES: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = request)]
async fn charge(request: Uuid, amount: u64) -> Result<Receipt, PayError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    if amount == 0 {
        return Err(PayError::Declined);
    }
    Ok(receipt(&CHARGES, amount))
}

fn charges() -> usize {
    CHARGES.load(Ordering::SeqCst)
}

/// The tests in this file share the counter; they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn second_call_returns_the_stored_result_without_running() {
    let _serial = SERIAL.lock().await;
    let key = Uuid::new_v4();
    let before = charges();
    let first = charge(key, 10).await.unwrap();
    let second = charge(key, 10).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(charges(), before + 1, "the body ran once");
    let other = charge(Uuid::new_v4(), 10).await.unwrap();
    assert_ne!(other, first, "another key runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_run_the_body_once() {
    let _serial = SERIAL.lock().await;
    let key = Uuid::new_v4();
    let before = charges();
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { charge(key, 7).await.unwrap() }))
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    assert_eq!(charges(), before + 1, "the body ran once");
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every caller got the same result"
    );
}

#[tokio::test]
async fn an_error_is_not_stored() {
    let _serial = SERIAL.lock().await;
    let key = Uuid::new_v4();
    let before = charges();
    assert!(matches!(charge(key, 0).await, Err(PayError::Declined)));
    assert!(
        matches!(charge(key, 0).await, Err(PayError::Declined)),
        "ran again"
    );
    let ok = charge(key, 5).await.unwrap();
    assert_eq!(charge(key, 5).await.unwrap(), ok);
    assert_eq!(charges(), before + 1);
}

static REFUNDS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = request, ttl_secs = 1, scope = tenant)]
async fn refund(tenant: &str, request: &str, amount: u64) -> Result<Receipt, PayError> {
    Ok(receipt(&REFUNDS, amount))
}

/// Records are scoped by function and by the `scope` option; they expire after `ttl_secs`.
#[tokio::test]
async fn scopes_functions_and_ttl() {
    let key = Uuid::new_v4().to_string();
    let a = refund("tenant-a", &key, 1).await.unwrap();
    let b = refund("tenant-b", &key, 1).await.unwrap();
    assert_ne!(a, b, "tenants do not share results");
    assert_eq!(refund("tenant-a", &key, 1).await.unwrap(), a);
    let uuid = Uuid::new_v4();
    let _serial = SERIAL.lock().await;
    let charged = charge(uuid, 3).await.unwrap();
    assert_ne!(
        refund("tenant-a", &uuid.to_string(), 3).await.unwrap().id,
        charged.id,
        "two functions never share results"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_ne!(
        refund("tenant-a", &key, 1).await.unwrap(),
        a,
        "expired: ran again"
    );
}

static TRANSFERS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = id, fingerprint = (from, to, amount))]
async fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Result<Receipt, PayError> {
    Ok(receipt(&TRANSFERS, amount))
}

/// A key reused with other arguments (as the fingerprint sees them) is refused; an invalid key
/// is an error, not a panic.
#[tokio::test]
async fn fingerprint_mismatch_and_invalid_key() {
    let key = Uuid::new_v4().to_string();
    let first = transfer(&key, "a", "b", 10).await.unwrap();
    assert_eq!(transfer(&key, "a", "b", 10).await.unwrap(), first);
    assert!(matches!(
        transfer(&key, "a", "b", 11).await,
        Err(PayError::Idempotency(IdempotencyError::KeyReused { .. }))
    ));
    assert!(matches!(
        transfer("", "a", "b", 10).await,
        Err(PayError::Idempotency(IdempotencyError::InvalidKey(_)))
    ));
    assert!(matches!(
        transfer("bad\nkey", "a", "b", 10).await,
        Err(PayError::Idempotency(IdempotencyError::InvalidKey(_)))
    ));
}

/// Payments on PostgreSQL through the `store = ..` option of a method.
struct Payments {
    keys: PgIdempotencyStore,
    runs: AtomicUsize,
}

impl Payments {
    #[idempotent(key = request, store = self.keys, lock_timeout_secs = 1)]
    async fn pay(&self, request: Uuid, amount: u64, hold: Duration) -> Result<Receipt, PayError> {
        tokio::time::sleep(hold).await;
        Ok(receipt(&self.runs, amount))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_results_outlive_the_store_and_concurrent_calls_run_once() {
    let pool = tests::pg_store().await.pool().clone();
    let payments = Arc::new(Payments {
        keys: PgIdempotencyStore::new(pool.clone()),
        runs: AtomicUsize::new(0),
    });
    let key = Uuid::new_v4();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let payments = Arc::clone(&payments);
            tokio::spawn(async move {
                payments
                    .pay(key, 9, Duration::from_millis(300))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    assert_eq!(
        payments.runs.load(Ordering::SeqCst),
        1,
        "one run for 16 concurrent calls"
    );
    assert!(results.iter().all(|r| *r == results[0]));

    // Another process (a fresh store on the same database) replays the stored result.
    let restarted = Payments {
        keys: PgIdempotencyStore::new(pool),
        runs: AtomicUsize::new(0),
    };
    assert_eq!(
        restarted.pay(key, 9, Duration::ZERO).await.unwrap(),
        results[0]
    );
    assert_eq!(restarted.runs.load(Ordering::SeqCst), 0);
}

/// A caller dropped mid-body (as in a crash) leaves the key locked: a duplicate waits, and runs
/// the body itself once the lock times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_blocks_only_until_its_lock_times_out() {
    let payments = Payments {
        keys: PgIdempotencyStore::new(tests::pg_store().await.pool().clone()),
        runs: AtomicUsize::new(0),
    };
    let key = Uuid::new_v4();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        payments.pay(key, 1, Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err(), "the first call was cancelled mid-body");
    let started = std::time::Instant::now();
    let receipt = payments.pay(key, 1, Duration::ZERO).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "waited for the lock timeout (1 s from the claim): {waited:?}"
    );
    assert_eq!(
        receipt.run, 1,
        "the second call ran the body (the first never finished)"
    );
    assert_eq!(payments.pay(key, 1, Duration::ZERO).await.unwrap(), receipt);
}

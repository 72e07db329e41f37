//! The idempotency-store contract suite on both backends, plus what only PostgreSQL can show:
//! a claim and its result committed (or rolled back) with the events of the same transaction,
//! duplicates waiting on that transaction, and indexes serving every statement.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::UnitOfWork as _;
use dtx::idempotency::{
    Claim, ClaimRequest, Fingerprint, IdempotencyKey, IdempotencyStatus, IdempotencyStore, Scope,
};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::PgIdempotencyStore;
use std::time::Duration;
use uuid::Uuid;

async fn pg() -> PgIdempotencyStore {
    PgIdempotencyStore::new(tests::pg_store().await.pool().clone())
}

mod memory {
    dtx::idempotency_store_contract_tests!(dtx::idempotency::MemoryIdempotencyStore::new());
}

mod postgres {
    dtx::idempotency_store_contract_tests!(super::pg().await);
}

fn charge(key: &IdempotencyKey) -> ClaimRequest {
    ClaimRequest::new(
        Scope::new("customer-7").unwrap(),
        key.clone(),
        Fingerprint::of(br#"{"amount":100}"#),
    )
}

/// Claim, append and complete in one transaction: a rollback leaves neither the events nor the
/// record (the key is free again), a commit stores both, and a retry replays the result.
#[tokio::test]
async fn claim_and_events_commit_or_roll_back_together() {
    let events = tests::pg_store().await;
    let keys = PgIdempotencyStore::new(events.pool().clone());
    let key = IdempotencyKey::new(Uuid::new_v4().to_string()).unwrap();
    let request = charge(&key);
    let stream = StreamId::new(format!("Payment-{}", Uuid::now_v7())).unwrap();
    let event = || NewEvent::from_json("Charged", &serde_json::json!({"amount": 100})).unwrap();

    let mut tx = dtx_postgres::PgUnitOfWork::begin(events.pool())
        .await
        .unwrap();
    let Claim::Claimed(lease) = keys.claim_in(&mut tx, &request).await.unwrap() else {
        panic!("a fresh key is claimed")
    };
    events
        .append_in(&mut tx, &stream, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    keys.complete_in(&mut tx, &lease, b"charged").await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        events.stream_version(&stream).await.unwrap(),
        0,
        "no events"
    );
    assert!(
        keys.load(&request.scope, &key).await.unwrap().is_none(),
        "no record"
    );

    let mut tx = dtx_postgres::PgUnitOfWork::begin(events.pool())
        .await
        .unwrap();
    let Claim::Claimed(lease) = keys.claim_in(&mut tx, &request).await.unwrap() else {
        panic!("the rolled-back key is free")
    };
    events
        .append_in(&mut tx, &stream, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    keys.complete_in(&mut tx, &lease, b"charged").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(events.stream_version(&stream).await.unwrap(), 1);
    let record = keys.load(&request.scope, &key).await.unwrap().unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed);
    assert!(matches!(keys.claim(&request).await.unwrap(),
        Claim::Completed(r) if r == b"charged"));
}

/// A duplicate claimed while the first transaction is open waits for its commit, then gets
/// the stored result: no 409 window for transactional use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_waits_for_the_claiming_transaction() {
    let keys = pg().await;
    let key = IdempotencyKey::new(Uuid::new_v4().to_string()).unwrap();
    let request = charge(&key);
    let mut tx = dtx_postgres::PgUnitOfWork::begin(keys.pool())
        .await
        .unwrap();
    let Claim::Claimed(lease) = keys.claim_in(&mut tx, &request).await.unwrap() else {
        panic!("claimed")
    };
    let duplicate = {
        let (keys, request) = (keys.clone(), request.clone());
        tokio::spawn(async move { keys.claim(&request).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the transaction"
    );
    keys.complete_in(&mut tx, &lease, b"once").await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(duplicate.await.unwrap(), Claim::Completed(r) if r == b"once"));

    // After a rollback the waiting duplicate claims the key itself.
    let key = IdempotencyKey::new(Uuid::new_v4().to_string()).unwrap();
    let request = charge(&key);
    let mut tx = dtx_postgres::PgUnitOfWork::begin(keys.pool())
        .await
        .unwrap();
    assert!(matches!(
        keys.claim_in(&mut tx, &request).await.unwrap(),
        Claim::Claimed(_)
    ));
    let duplicate = {
        let (keys, request) = (keys.clone(), request.clone());
        tokio::spawn(async move { keys.claim(&request).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.rollback().await.unwrap();
    assert!(matches!(duplicate.await.unwrap(), Claim::Claimed(_)));
}

/// Every statement of the idempotency store is served by an index, never a sequential scan.
#[tokio::test]
async fn indexes_serve_every_idempotency_statement() {
    let keys = pg().await;
    for (name, plan) in tests::generic_plans(keys.pool(), keys.statements()).await {
        assert!(
            !plan.contains("Seq Scan on idempotency_keys"),
            "{name} scans the table:\n{plan}"
        );
        if name == "idempotency_cleanup" {
            assert!(
                plan.contains("idempotency_keys_expiry"),
                "cleanup walks the expiry index:\n{plan}"
            );
        }
    }
}

/// The store works in a named schema; the name is validated.
#[tokio::test]
async fn works_in_a_schema() {
    let events = tests::pg_store().await;
    dtx_postgres::migrate_in_schema(events.pool(), "tenant_b")
        .await
        .unwrap();
    let tenant = PgIdempotencyStore::new(events.pool().clone())
        .with_schema("tenant_b")
        .unwrap();
    let public = PgIdempotencyStore::new(events.pool().clone());
    let key = IdempotencyKey::new("same-key").unwrap();
    assert!(matches!(
        tenant.claim(&charge(&key)).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert!(
        matches!(
            public.claim(&charge(&key)).await.unwrap(),
            Claim::Claimed(_)
        ),
        "tables are separate"
    );
    assert!(
        PgIdempotencyStore::new(events.pool().clone())
            .with_schema("x\"; DROP TABLE idempotency_keys; --")
            .is_err()
    );
}

/// The background cleaner deletes expired records in batches until none is left.
#[tokio::test]
async fn spawned_cleanup_deletes_expired_records() {
    let store = dtx::idempotency::MemoryIdempotencyStore::new();
    let policy = dtx::idempotency::IdempotencyPolicy {
        ttl: Duration::from_millis(100),
        lock_timeout: Duration::from_millis(50),
    };
    for n in 0..7 {
        let key = IdempotencyKey::new(format!("k{n}")).unwrap();
        let Claim::Claimed(lease) = store
            .claim(&charge(&key).with_policy(policy))
            .await
            .unwrap()
        else {
            panic!("claimed")
        };
        store.complete(&lease, b"done").await.unwrap();
    }
    let live = IdempotencyKey::new("live").unwrap();
    assert!(matches!(
        store.claim(&charge(&live)).await.unwrap(),
        Claim::Claimed(_)
    ));
    let cleaner = dtx::idempotency::spawn_cleanup(
        std::sync::Arc::new(store.clone()),
        Duration::from_millis(50),
        2,
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    cleaner.abort();
    assert_eq!(store.len(), 1, "only the live record is left");
}

//! Retention: purges delete exactly what is due (seeded due and not-due rows of every kind, on
//! PostgreSQL and in memory), in bounded batches, and run while writers, the outbox relay, saga
//! workers, consumers and idempotent requests are busy, without an error anywhere.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::idempotency::{
    Claim, ClaimRequest, Fingerprint, IdempotencyKey, IdempotencyPolicy, IdempotencyStore as _,
    MemoryIdempotencyStore, Scope,
};
use dtx::inbox::{InboundMessage, InboxStore, MemoryInbox};
use dtx::outbox::{MemoryOutbox, MemoryPublisher, NewOutboxMessage, RelayOptions};
use dtx::retention::{MemoryPurger, Retention, RetentionKind, RetentionPolicy};
use dtx::saga::testing::contract::Fulfil;
use dtx::saga::{
    MemorySagaStore, Saga as _, SagaOrchestrator, SagaRecord, SagaStatus, SagaStore as _,
    WorkerOptions,
};
use dtx::{EventStore as _, ExpectedVersion, NewEvent, StreamId, UnitOfWork as _};
use dtx_postgres::retention::PgPurger;
use dtx_postgres::{PgIdempotencyStore, PgInbox, PgOutbox, PgSagaStore, PgUnitOfWork};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

const DAY: Duration = Duration::from_hours(24);

async fn names(pool: &PgPool, sql: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Seeds rows of every kind, due and not due under the default policy, straight into the
/// tables (ages in the past), each named for what it is.
async fn seed(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO saga_state (id, name, status, data, next_run_at, created_at, updated_at)
         SELECT gen_random_uuid(), s.name, s.status, '{}', now(),
                now() - s.created * interval '1 day', now() - s.updated * interval '1 day'
         FROM (VALUES ('completed-old', 'completed', 41, 40), ('completed-new', 'completed', 2, 1),
                      ('completed-recently', 'completed', 41, 1),
                      ('compensated-old', 'compensated', 41, 40),
                      ('compensated-new', 'compensated', 2, 1),
                      ('failed-old', 'failed', 41, 40), ('running-old', 'running', 41, 40),
                      ('waiting-old', 'waiting', 41, 40),
                      ('compensating-old', 'compensating', 41, 40))
              AS s(name, status, created, updated)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox_published (stream_key, id, attempts, created_at, published_at)
         SELECT k, n, 1, now() - d * interval '1 day', now() - d * interval '1 day'
         FROM (VALUES ('published-old', 1, 10), ('published-old', 2, 8),
                      ('published-new', 3, 1)) AS p(k, n, d)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO inbox_messages (consumer, message_id, message_type, received_at)
         SELECT c, gen_random_uuid(), 'Seeded', now() - d * interval '1 day'
         FROM (VALUES ('inbox-old', 20), ('inbox-old', 15), ('inbox-new', 1)) AS i(c, d)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO inbox_dead_letters (consumer, message_id, message_type, payload, error,
                                         attempts, dead_at)
         VALUES ('dead-old', gen_random_uuid(), 'Seeded', '\\x00', 'boom', 3,
                 now() - interval '90 days')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, status, lease,
                                       locked_until, response, created_at, completed_at,
                                       expires_at)
         SELECT 'seed', k, decode(repeat('ab', 32), 'hex'), s,
                CASE WHEN s = 'in_progress' THEN gen_random_uuid() END,
                CASE WHEN s = 'in_progress' THEN now() + l * interval '1 hour' END,
                CASE WHEN s = 'completed' THEN '\\x01'::bytea END,
                now() - interval '2 days', NULL, now() + e * interval '1 hour'
         FROM (VALUES ('expired-completed', 'completed', 0, -1),
                      ('live-completed', 'completed', 0, 24),
                      ('expired-held', 'in_progress', 1, -1),
                      ('expired-abandoned', 'in_progress', -1, -1))
              AS k(k, s, l, e)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The default policy, in batches of one row (every kind takes several batches), deletes the
/// due rows of each kind and nothing else; a dry run counts exactly those first; failed sagas
/// go only when the policy names them.
#[tokio::test]
async fn postgres_purges_exactly_what_is_due() {
    let pool = dtx_postgres::testing::fresh_database(4).await.unwrap();
    seed(&pool).await;
    let policy = RetentionPolicy {
        batch: 1,
        ..RetentionPolicy::default()
    };
    let retention = Retention::new(policy, PgPurger::new(pool.clone()));
    let due = retention.dry_run().await.unwrap();
    assert_eq!(due.of(RetentionKind::FinishedSagas), 2);
    assert_eq!(due.of(RetentionKind::PublishedOutbox), 2);
    assert_eq!(due.of(RetentionKind::Inbox), 2);
    assert_eq!(due.of(RetentionKind::IdempotencyKeys), 2);
    assert!(
        !due.purged.contains_key(&RetentionKind::FailedSagas),
        "failed sagas are kept by default"
    );
    let purged = retention.purge_once().await.unwrap();
    assert_eq!(purged, due, "the purge deletes what the dry run counted");
    assert_eq!(retention.purge_once().await.unwrap().total(), 0);

    assert_eq!(
        names(&pool, "SELECT name FROM saga_state").await,
        set(&[
            "completed-new",
            "completed-recently",
            "compensated-new",
            "failed-old",
            "running-old",
            "waiting-old",
            "compensating-old"
        ])
    );
    assert_eq!(
        names(&pool, "SELECT stream_key FROM outbox_published").await,
        set(&["published-new"])
    );
    assert_eq!(
        names(&pool, "SELECT consumer FROM inbox_messages").await,
        set(&["inbox-new"])
    );
    assert_eq!(
        names(&pool, "SELECT consumer FROM inbox_dead_letters").await,
        set(&["dead-old"]),
        "dead letters are kept"
    );
    assert_eq!(
        names(&pool, "SELECT idempotency_key FROM idempotency_keys").await,
        set(&["live-completed", "expired-held"])
    );

    let with_failed = Retention::new(
        policy.keep(RetentionKind::FailedSagas, Some(DAY * 30)),
        PgPurger::new(pool.clone()),
    );
    assert_eq!(
        with_failed
            .purge_once()
            .await
            .unwrap()
            .of(RetentionKind::FailedSagas),
        1
    );
    assert!(
        !names(&pool, "SELECT name FROM saga_state")
            .await
            .contains("failed-old")
    );

    // One age for everything (`dtx purge --older-than 12h`): the day-old rows go too, the
    // unfinished sagas and the held key stay.
    let all = Retention::new(
        policy.older_than(Duration::from_hours(12)),
        PgPurger::new(pool.clone()),
    );
    all.purge_once().await.unwrap();
    assert_eq!(
        names(&pool, "SELECT name FROM saga_state").await,
        set(&["running-old", "waiting-old", "compensating-old"])
    );
    assert!(
        names(&pool, "SELECT stream_key FROM outbox_published")
            .await
            .is_empty()
    );
    assert!(
        names(&pool, "SELECT consumer FROM inbox_messages")
            .await
            .is_empty()
    );
    assert_eq!(
        names(&pool, "SELECT idempotency_key FROM idempotency_keys").await,
        set(&["live-completed", "expired-held"])
    );
}

/// A saga record in `status` that last changed `age` ago.
fn saga(name: &str, status: SagaStatus, age: Duration) -> SagaRecord {
    let at = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    let mut record = SagaRecord::new(name, serde_json::json!({}), at, None, None);
    record.status = status;
    record.updated_at = at;
    record
}

fn message(n: u32) -> InboundMessage {
    InboundMessage::new(Uuid::now_v7(), "Seeded", serde_json::to_vec(&n).unwrap())
}

/// The in-memory stores purge by the same rules.
#[tokio::test]
async fn memory_purges_exactly_what_is_due() {
    let sagas = MemorySagaStore::new();
    for (name, status, age) in [
        ("completed-old", SagaStatus::Completed, DAY * 40),
        ("completed-new", SagaStatus::Completed, DAY),
        ("compensated-old", SagaStatus::Compensated, DAY * 40),
        ("failed-old", SagaStatus::Failed, DAY * 40),
        ("running-old", SagaStatus::Running, DAY * 40),
        ("waiting-old", SagaStatus::Waiting, DAY * 40),
    ] {
        sagas.insert(&saga(name, status, age)).await.unwrap();
    }
    let keys = MemoryIdempotencyStore::new();
    let scope = Scope::new("seed").unwrap();
    let claim = |key: &str, ttl: Duration| {
        ClaimRequest::new(
            scope.clone(),
            IdempotencyKey::new(key).unwrap(),
            Fingerprint::of(key.as_bytes()),
        )
        .with_policy(IdempotencyPolicy {
            ttl,
            lock_timeout: Duration::from_millis(50),
        })
    };
    for (key, ttl, complete) in [
        ("expired-completed", Duration::from_millis(100), true),
        ("live-completed", DAY, true),
        ("expired-abandoned", Duration::from_millis(100), false),
    ] {
        let Claim::Claimed(lease) = keys.claim(&claim(key, ttl)).await.unwrap() else {
            panic!("{key} is free");
        };
        if complete {
            keys.complete(&lease, b"done").await.unwrap();
        }
    }
    let inbox = MemoryInbox::new();
    let mut uow = inbox.begin().await.unwrap();
    for n in 0..3 {
        inbox
            .record_in(uow.as_mut(), "consumer", &message(n))
            .await
            .unwrap();
    }
    uow.commit_boxed().await.unwrap();
    // Past every short expiry and lock above.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let memory = MemoryPurger::new()
        .sagas(sagas.clone())
        .inbox(inbox.clone())
        .idempotency(keys.clone());
    let retention = Retention::new(
        RetentionPolicy {
            batch: 1,
            ..RetentionPolicy::default()
        },
        memory.clone(),
    );
    let due = retention.dry_run().await.unwrap();
    let purged = retention.purge_once().await.unwrap();
    assert_eq!(purged, due);
    assert_eq!(purged.of(RetentionKind::FinishedSagas), 2);
    assert_eq!(purged.of(RetentionKind::IdempotencyKeys), 2);
    assert_eq!(
        purged.of(RetentionKind::Inbox),
        0,
        "received seconds ago: kept 14 days"
    );
    let mut remaining = BTreeSet::new();
    for status in [
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
        SagaStatus::Running,
        SagaStatus::Waiting,
    ] {
        for record in sagas.list(status, 100).await.unwrap() {
            remaining.insert(record.name);
        }
    }
    assert_eq!(
        remaining,
        set(&["completed-new", "failed-old", "running-old", "waiting-old"])
    );
    assert_eq!(keys.len(), 1, "only the live key is left");
    assert!(
        keys.load(&scope, &IdempotencyKey::new("live-completed").unwrap())
            .await
            .unwrap()
            .is_some()
    );

    // The inbox's records, once older than the policy says (zero here), go too.
    let now = Retention::new(
        RetentionPolicy::default().keep(RetentionKind::Inbox, Some(Duration::ZERO)),
        memory,
    );
    assert_eq!(now.purge_once().await.unwrap().of(RetentionKind::Inbox), 3);

    // Published outbox copies: kept as long as the policy says, then purged.
    let outbox = MemoryOutbox::new();
    outbox
        .enqueue(vec![NewOutboxMessage::new("key", "Seeded", &1).unwrap()])
        .unwrap();
    let published = outbox
        .publish_pending(&MemoryPublisher::new(), &RelayOptions::default())
        .await;
    assert_eq!(published, 1);
    let kept = Retention::new(
        RetentionPolicy::default(),
        MemoryPurger::new().outbox(outbox.clone()),
    );
    assert_eq!(
        kept.purge_once()
            .await
            .unwrap()
            .of(RetentionKind::PublishedOutbox),
        0
    );
    let zero = Retention::new(
        RetentionPolicy::default().keep(RetentionKind::PublishedOutbox, Some(Duration::ZERO)),
        MemoryPurger::new().outbox(outbox.clone()),
    );
    assert_eq!(
        zero.dry_run()
            .await
            .unwrap()
            .of(RetentionKind::PublishedOutbox),
        1
    );
    assert_eq!(
        zero.purge_once()
            .await
            .unwrap()
            .of(RetentionKind::PublishedOutbox),
        1
    );
}

/// Purges with a zero age (everything finished is due at once: the most contention possible)
/// loop while writers append with the outbox, a relay publishes them and enqueued messages
/// (whose published copies it keeps), saga workers run sagas to completion, a consumer records
/// inbox messages and requests claim and complete idempotency keys. Nothing fails, every event
/// and message is published, every saga finishes, and the purges did delete rows of every kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_run_alongside_live_traffic() {
    const WRITERS: usize = 4;
    const APPENDS: u64 = 40;
    const SAGAS: usize = 30;
    let pool = dtx_postgres::testing::fresh_database(24).await.unwrap();
    let store = dtx_postgres::PgEventStore::new(pool.clone()).with_outbox(true);
    let outbox = PgOutbox::new(pool.clone());
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            retention: Some(DAY),
            ..RelayOptions::default()
        },
    );
    let sagas_store = PgSagaStore::new(pool.clone());
    let sagas = SagaOrchestrator::builder(Arc::new(sagas_store.clone()))
        .events(Arc::new(store.clone()))
        .saga(Fulfil::definition())
        .build()
        .unwrap();
    let inbox = PgInbox::new(pool.clone());
    let keys = PgIdempotencyStore::new(pool.clone());
    let stop = Arc::new(AtomicBool::new(false));

    let policy = RetentionPolicy {
        finished_sagas: Some(Duration::ZERO),
        failed_sagas: Some(Duration::ZERO),
        published_outbox: Some(Duration::ZERO),
        inbox: Some(Duration::ZERO),
        idempotency_keys: Some(Duration::ZERO),
        batch: 5,
        every: Duration::from_millis(1),
    };
    let purging = {
        let retention = Retention::new(policy, PgPurger::new(pool.clone()));
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut total = dtx::retention::PurgeReport::default();
            let mut passes = 0;
            while !stop.load(Ordering::SeqCst) || passes < 3 {
                let report = retention.purge_once().await.unwrap();
                for (kind, n) in report.purged {
                    *total.purged.entry(kind).or_default() += n;
                }
                passes += 1;
                tokio::task::yield_now().await;
            }
            (total, passes)
        })
    };

    let mut traffic = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let outbox = outbox.clone();
        let pool = pool.clone();
        traffic.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("Retained-{w}-{}", Uuid::now_v7())).unwrap();
            for n in 0..APPENDS {
                let event =
                    NewEvent::from_json("Credited", &serde_json::json!({ "n": n })).unwrap();
                store
                    .append(&stream, ExpectedVersion::Exact(n), vec![event])
                    .await
                    .unwrap();
                if n % 4 == 0 {
                    let mut conn = pool.acquire().await.unwrap();
                    outbox
                        .enqueue(
                            &mut conn,
                            vec![NewOutboxMessage::new(format!("msg-{w}"), "Note", &n).unwrap()],
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    {
        let inbox = inbox.clone();
        traffic.push(tokio::spawn(async move {
            for n in 0..100 {
                let mut uow = PgUnitOfWork::begin(inbox.pool()).await.unwrap();
                assert!(
                    inbox
                        .record_in(&mut uow, "consumer", &message(n))
                        .await
                        .unwrap()
                );
                uow.commit().await.unwrap();
            }
        }));
    }
    {
        // Live requests (the default TTL: never due) claim and complete their keys while
        // expired keys keep arriving for the purge.
        let keys = keys.clone();
        traffic.push(tokio::spawn(async move {
            let scope = Scope::new("live").unwrap();
            for n in 0..100 {
                let request = ClaimRequest::new(
                    scope.clone(),
                    IdempotencyKey::new(format!("request-{n}")).unwrap(),
                    Fingerprint::of(b"body"),
                );
                let Claim::Claimed(lease) = keys.claim(&request).await.unwrap() else {
                    panic!("request-{n} is new");
                };
                keys.complete(&lease, b"ok").await.unwrap();
                sqlx::query(
                    "INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, status,
                                                   response, created_at, expires_at)
                     VALUES ('expired', $1, decode(repeat('ab', 32), 'hex'), 'completed',
                             '\\x01', now() - interval '2 days', now() - interval '1 day')",
                )
                .bind(format!("expired-{n}"))
                .execute(keys.pool())
                .await
                .unwrap();
            }
        }));
    }
    let mut started = Vec::new();
    for _ in 0..SAGAS {
        started.push(sagas.start(Fulfil::default()).await.unwrap());
    }
    let working = {
        let worker = sagas.worker(WorkerOptions::default());
        tokio::spawn(async move { worker.run_until_idle().await.unwrap() })
    };
    let relaying = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                relay.run_until_idle().await.unwrap();
                tokio::task::yield_now().await;
            }
            relay.run_until_idle().await.unwrap();
        })
    };
    for task in traffic {
        task.await.unwrap();
    }
    working.await.unwrap();
    let events = WRITERS * usize::try_from(APPENDS).unwrap();
    let messages = WRITERS * usize::try_from(APPENDS.div_ceil(4)).unwrap();
    // Each saga records one event in its own stream (with the outbox, published too).
    let expected = events + messages + SAGAS;
    assert!(
        publisher.wait_for(expected, Duration::from_mins(2)).await,
        "every event and message is published: {} of {expected}",
        publisher.count()
    );
    stop.store(true, Ordering::SeqCst);
    relaying.await.unwrap();
    let (purged, passes) = purging.await.unwrap();
    assert!(passes >= 3);

    for id in started {
        // Finished, or finished and purged already: never stuck, never failed.
        match sagas.status(id).await {
            Ok(record) => assert_eq!(record.status, SagaStatus::Completed, "{id}"),
            Err(dtx::saga::SagaError::NotFound { .. }) => {}
            Err(error) => panic!("{id}: {error}"),
        }
    }
    // What is left is purged by one more pass; the purges deleted rows of every kind.
    let last = Retention::new(policy, PgPurger::new(pool.clone()))
        .purge_once()
        .await
        .unwrap();
    for kind in [
        RetentionKind::FinishedSagas,
        RetentionKind::PublishedOutbox,
        RetentionKind::Inbox,
        RetentionKind::IdempotencyKeys,
    ] {
        assert!(
            purged.of(kind) + last.of(kind) > 0,
            "{kind}: nothing purged ({purged:?}, then {last:?})"
        );
    }
    assert_eq!(
        purged.of(RetentionKind::FinishedSagas) + last.of(RetentionKind::FinishedSagas),
        SAGAS as u64
    );
    assert_eq!(
        purged.of(RetentionKind::Inbox) + last.of(RetentionKind::Inbox),
        100
    );
    assert_eq!(
        purged.of(RetentionKind::IdempotencyKeys) + last.of(RetentionKind::IdempotencyKeys),
        100
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM saga_state) + (SELECT count(*) FROM inbox_messages)
              + (SELECT count(*) FROM outbox_published)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let live: Vec<String> = sqlx::query_scalar("SELECT scope FROM idempotency_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        live,
        vec!["live".to_owned(); 100],
        "the live keys, and only they, are left"
    );
}

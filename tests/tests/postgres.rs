//! Guarantees of the PostgreSQL backend that need PostgreSQL itself to break: the global feed
//! under out-of-order commits, lost commits, migrations, indexes and corrupted rows.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::UnitOfWork as _;
use dtx::{
    Error, EventStore, ExpectedVersion, GlobalPosition, NewEvent, Repository, StreamId,
    testing::Ledger,
};
use dtx_postgres::PgEventStore;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tests::fault_proxy::{Fault, FaultProxy, Statement};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Credited", &serde_json::json!({ "amount": n })).unwrap()
}

/// Writers commit out of order, a fifth of them roll back, and one transaction stays open for
/// seconds while a reader follows the feed: the reader's sequence must equal the committed set,
/// each event once, with per-stream order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_feed_never_skips_late_commits() {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 25;
    let store = Arc::new(tests::pg_store().await);
    let done = Arc::new(AtomicBool::new(false));
    let expected_total = Arc::new(AtomicUsize::new(0));

    let reader = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let expected_total = Arc::clone(&expected_total);
        tokio::spawn(async move {
            let mut after = GlobalPosition::START;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
            loop {
                let page = store.read_all(after, 50).await.unwrap();
                for e in &page {
                    assert!(e.position > after, "feed positions strictly increase");
                    after = e.position;
                }
                seen.extend(
                    page.iter()
                        .map(|e| (e.event_id, e.stream_id.clone(), e.version)),
                );
                if done.load(Ordering::SeqCst)
                    && seen.len() >= expected_total.load(Ordering::SeqCst)
                {
                    return seen;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reader stalled: {} of {} events",
                    seen.len(),
                    expected_total.load(Ordering::SeqCst)
                );
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    // One transaction that appends early and commits late.
    let held_id;
    let holder = {
        let store = Arc::clone(&store);
        let e = event(0);
        held_id = e.event_id;
        let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
            .await
            .unwrap();
        store
            .append_in(
                &mut tx,
                &StreamId::new("held-1").unwrap(),
                ExpectedVersion::NoStream,
                vec![e],
            )
            .await
            .unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tx.commit().await.unwrap();
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (w as u64 + 1);
            for round in 0..ROUNDS {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let stream = StreamId::new(format!("feed-{}", rng % 6)).unwrap();
                let batch: Vec<NewEvent> = (0..=(rng % 3)).map(event).collect();
                let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                if round % 4 == 0 {
                    store
                        .append(&stream, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                    committed.extend(ids);
                    continue;
                }
                let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
                    .await
                    .unwrap();
                match store
                    .append_in(&mut tx, &stream, ExpectedVersion::Any, batch)
                    .await
                {
                    Ok(_) => {}
                    // A race lost to a concurrent writer of the version aborts the transaction.
                    Err(Error::Conflict { .. } | Error::RolledBack { .. }) => {
                        tx.rollback().await.unwrap();
                        continue;
                    }
                    Err(other) => panic!("{other}"),
                }
                // Commit after a random delay, so later appends often commit first.
                tokio::time::sleep(Duration::from_millis(rng % 25)).await;
                if rng.is_multiple_of(5) {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    holder.await.unwrap();
    committed.insert(held_id);
    expected_total.store(committed.len(), Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let seen_ids: Vec<Uuid> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        seen_ids.len(),
        committed.len(),
        "nothing skipped or repeated"
    );
    assert_eq!(
        seen_ids.iter().copied().collect::<HashSet<_>>(),
        committed,
        "exactly the committed set"
    );
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    for (_, stream, version) in &seen {
        let prev = last.insert(stream, *version).unwrap_or(0);
        assert_eq!(
            *version,
            prev + 1,
            "per-stream order in the feed for {stream}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        usize::try_from(stored).unwrap(),
        committed.len(),
        "rolled-back appends left nothing"
    );
}

/// The connection dies after the append was sent and committed: the caller gets
/// `OutcomeUnknown` (never a silent replay), and retrying the same events is an idempotent
/// success that stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_is_outcome_unknown_and_retry_is_idempotent() {
    let direct = tests::pg_store().await;
    let proxy = FaultProxy::in_front_of(direct.pool()).await.unwrap();
    let proxied = PgEventStore::new(proxy.pool(1).await.unwrap());

    let stream = StreamId::new("lost-commit-1").unwrap();
    let batch: Vec<NewEvent> = (1..=3).map(event).collect();
    proxy.arm(Fault::during(Statement::containing(
        "INSERT INTO event_store",
    )));
    let error = proxied
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::OutcomeUnknown { stream: s, .. } if *s == stream),
        "{error:?}"
    );
    assert_eq!(proxy.counts().faults, 1, "the proxy cut the answer");

    // The write did commit on the server; the retry finds it and stores nothing new.
    assert_eq!(direct.stream_version(&stream).await.unwrap(), 3);
    let retry = direct
        .append(&stream, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert!(retry.deduplicated);
    assert_eq!((retry.first_version, retry.last_version), (1, 3));
    assert_eq!(direct.read_stream(&stream, 1, 100).await.unwrap().len(), 3);
}

/// The migrations are idempotent, work in a named schema, and carry the checksums that
/// `sqlx migrate run` computes from the files (in `dtx-postgres/migrations/`, or through the
/// repository's `migrations/` link to it), so either tool can apply them.
#[tokio::test]
async fn migrations_match_sqlx_cli_and_run_in_a_schema() {
    let store = tests::pg_store().await;
    dtx_postgres::migrate(store.pool()).await.unwrap();

    let embedded: Vec<_> = dtx_postgres::MIGRATOR
        .iter()
        .map(|m| (m.version, m.checksum.clone()))
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["dtx-postgres/migrations", "migrations"] {
        let from_files = sqlx::migrate::Migrator::new(root.join(dir)).await.unwrap();
        let files: Vec<_> = from_files
            .iter()
            .map(|m| (m.version, m.checksum.clone()))
            .collect();
        assert_eq!(
            embedded, files,
            "embedded migrations equal the files in {dir}"
        );
        from_files.run(store.pool()).await.unwrap();
    }

    dtx_postgres::migrate_in_schema(store.pool(), "tenant_a")
        .await
        .unwrap();
    dtx_postgres::migrate_in_schema(store.pool(), "tenant_a")
        .await
        .unwrap();
    let tenant = PgEventStore::new(store.pool().clone())
        .with_schema("tenant_a")
        .unwrap();
    let s = StreamId::new("schema-1").unwrap();
    tenant
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    assert_eq!(tenant.stream_version(&s).await.unwrap(), 1);
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        0,
        "schemas are separate"
    );
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        !search_path.contains("tenant_a"),
        "pooled connections keep their search_path"
    );
    assert!(matches!(
        PgEventStore::new(store.pool().clone()).with_schema("x\"; DROP TABLE event_store; --"),
        Err(Error::Invalid {
            what: "schema name",
            ..
        })
    ));
    assert!(
        dtx_postgres::migrate_in_schema(store.pool(), &"a".repeat(64))
            .await
            .is_err()
    );
}

/// Inside a caller's transaction, a stale `Exact` or `NoStream` append is a conflict naming the
/// stream's real version, whether the stream is longer (the unique constraint fails the statement
/// and aborts the transaction) or shorter (nothing inserted); rolled back, nothing of it is
/// stored, and the stream's events are intact.
#[tokio::test]
async fn stale_appends_in_a_transaction_are_conflicts_and_store_nothing() {
    let store = tests::pg_store().await;
    let stream = StreamId::new(format!("stale-{}", Uuid::now_v7())).unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (1..=3).map(event).collect(),
        )
        .await
        .unwrap();
    for (expected, events) in [
        (ExpectedVersion::NoStream, vec![event(9)]),
        (ExpectedVersion::Exact(1), vec![event(9)]),
        (ExpectedVersion::Exact(2), vec![event(9), event(10)]),
        (ExpectedVersion::Exact(7), vec![event(9)]),
    ] {
        let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
            .await
            .unwrap();
        match store.append_in(&mut tx, &stream, expected, events).await {
            Err(Error::Conflict {
                stream: named,
                expected: reported,
                actual,
            }) => {
                assert_eq!(named, stream);
                assert_eq!(reported, expected);
                assert_eq!(actual, 3, "{expected}");
            }
            other => panic!("{expected}: expected a conflict, got {other:?}"),
        }
        tx.rollback().await.unwrap();
    }
    let stored = store.read_stream(&stream, 1, 100).await.unwrap();
    let amounts: Vec<String> = stored.iter().map(|e| e.data.to_string()).collect();
    assert_eq!(
        amounts,
        [r#"{"amount": 1}"#, r#"{"amount": 2}"#, r#"{"amount": 3}"#]
    );
    // The expectation that holds still appends, in a transaction as on its own.
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    let appended = store
        .append_in(&mut tx, &stream, ExpectedVersion::Exact(3), vec![event(4)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((appended.first_version, appended.last_version), (4, 4));
}

/// Every statement the store issues is served by an index, never a sequential scan.
#[tokio::test]
async fn indexes_serve_every_statement() {
    let store = tests::pg_store().await;
    let saga_store = dtx_postgres::PgSagaStore::new(store.pool().clone());
    let sagas = saga_store.statements();
    for (name, plan) in
        tests::generic_plans(store.pool(), store.statements().into_iter().chain(sagas)).await
    {
        assert!(
            !plan.contains("Seq Scan on event_store")
                && !plan.contains("Seq Scan on event_snapshots")
                && !plan.contains("Seq Scan on saga_state"),
            "{name} scans a table:\n{plan}"
        );
    }
}

/// A payload corrupted in the table is a typed error naming stream and version, and the
/// stored rows stay readable.
#[tokio::test]
async fn corrupted_row_is_a_typed_error() {
    let store = tests::pg_store().await;
    let repo = Repository::<Ledger>::shared(Arc::new(store.clone()), &dtx::DtxConfig::default());
    let id = dtx::Id::<Ledger>::new();
    let mut root = repo.load(&id).await.unwrap();
    root.record([
        dtx::testing::Credited { amount: 1 },
        dtx::testing::Credited { amount: 2 },
    ])
    .unwrap();
    repo.save(&mut root).await.unwrap();
    let stream = <Ledger as dtx::Aggregate>::stream_id(&id).unwrap();
    sqlx::query("UPDATE event_store SET data = '[1, 2]' WHERE stream_id = $1 AND version = 2")
        .bind(stream.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    match repo.load(&id).await {
        Err(Error::Decode {
            stream: s,
            version: 2,
            ..
        }) => assert_eq!(s, stream),
        other => panic!("expected a decode error at version 2, got {other:?}"),
    }
    let rows = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(rows.len(), 2, "nothing stored is lost");
    let row = sqlx::query("SELECT count(*) AS n FROM event_store")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 2);
}

//! Closed and archived streams beyond the contract suite: through the command bus on both
//! backends; on PostgreSQL, the plans of the hot statements with a large archive, the feed
//! followed while streams are archived under it, and the outbox relay's claim on its events.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::unnecessary_wraps,
    reason = "tests"
)]

use dtx::cqrs::{CommandBus, CommandError};
use dtx::outbox::{MemoryPublisher, RelayOptions};
use dtx::{
    Aggregate, Apply, DomainEvent, Error, EventStore, ExpectedVersion, GlobalPosition, Id,
    NewEvent, SharedEventStore, StreamId, StreamState, command_handler,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, DomainEvent)]
enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent, snapshots = false)]
struct Account {
    id: Id<Account>,
    balance: u64,
}

impl Apply<Opened> for Account {
    fn apply(&mut self, _: &Opened) {}
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

#[derive(Debug, Clone)]
struct Deposit {
    account_id: Id<Account>,
    amount: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[command_handler]
impl Account {
    fn deposit(account: Option<&Self>, cmd: &Deposit) -> Result<Vec<AccountEvent>, Never> {
        let mut events = Vec::new();
        if account.is_none() {
            events.push(Opened {}.into());
        }
        events.push(Deposited { amount: cmd.amount }.into());
        Ok(events)
    }
}

/// A command on a closed stream fails with the store's typed error naming the stream, nothing
/// stored; on an archived stream the load refuses the same way; other accounts go on.
async fn commands_on_closed_streams_are_refused(store: SharedEventStore) {
    let bus = CommandBus::builder()
        .store(Arc::clone(&store))
        .cache_states(0)
        .registry()
        .build()
        .unwrap();
    let account = Id::<Account>::new();
    let stream = Account::stream_id(&account).unwrap();
    bus.execute(Deposit {
        account_id: account,
        amount: 5,
    })
    .await
    .unwrap();
    assert_eq!(store.close_stream(&stream).await.unwrap(), 2);
    let refused = bus
        .execute(Deposit {
            account_id: account,
            amount: 1,
        })
        .await
        .unwrap_err();
    let CommandError::Dtx(Error::StreamClosed { stream: named }) = &refused else {
        panic!("expected the store's StreamClosed, got {refused:?}");
    };
    assert_eq!(*named, stream);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);

    store.archive_stream(&stream).await.unwrap();
    let refused = bus
        .execute(Deposit {
            account_id: account,
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, CommandError::Dtx(Error::StreamArchived { stream: s }) if *s == stream),
        "{refused:?}"
    );
    let other = Id::<Account>::new();
    bus.execute(Deposit {
        account_id: other,
        amount: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        store.stream_state(&stream).await.unwrap(),
        StreamState::Archived { version: 2 }
    );
}

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commands_on_closed_streams_are_refused() {
        super::commands_on_closed_streams_are_refused(std::sync::Arc::new(tests::Yielding(
            dtx::MemoryEventStore::new(),
        )))
        .await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commands_on_closed_streams_are_refused() {
        super::commands_on_closed_streams_are_refused(std::sync::Arc::new(tests::pg_store().await))
            .await;
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Deposited", &serde_json::json!({ "amount": n })).unwrap()
}

/// With 200 000 archived events and 2 000 closed streams, the generic plans of the hot
/// statements: every append probes `closed_streams` by its primary key once (a one-time
/// filter) and never touches the archive; stream reads probe `closed_streams` only; the feed
/// reads the archive by its feed index, never by a scan. (The bench row `append_1_archived_1m`
/// times the same with a million archived events.)
#[tokio::test]
async fn hot_statements_probe_indexes_whatever_the_archive_holds() {
    let store = tests::pg_store().await;
    let pool = store.pool();
    sqlx::query(
        "INSERT INTO event_archive (stream_id, version, global_position, commit_order, event_id,
                                    event_type, schema_version, data, recorded_at, outbox)
         SELECT 'Archived-' || (n / 100), n % 100 + 1, n, 1, gen_random_uuid(), 'Deposited', 1,
                '{\"amount\": 1}', now(), false
         FROM generate_series(0, 199999) AS n",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO closed_streams (stream_id, last_version, archived_at)
         SELECT DISTINCT stream_id, 100, now() FROM event_archive",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE event_archive; ANALYZE closed_streams")
        .execute(pool)
        .await
        .unwrap();
    let statements = store.statements();
    let hot = [
        "append_any_one",
        "append_new_one",
        "append_exact_one",
        "append_exact_many",
        "append_exact_one_outbox",
        "append_in_one",
        "append_in_many",
        "read_stream",
        "read_stream_data",
        "read_all",
        "read_feed",
    ];
    let plans = tests::generic_plans(
        pool,
        statements
            .iter()
            .filter(|(name, _)| hot.contains(name))
            .map(|(name, sql)| (*name, *sql)),
    )
    .await;
    assert_eq!(plans.len(), hot.len());
    for (name, plan) in plans {
        assert!(
            !plan.contains("Seq Scan on"),
            "{name} scans a table:\n{plan}"
        );
        if name.starts_with("append") || name.starts_with("read_stream") {
            assert!(
                plan.contains("closed_streams_pkey"),
                "{name} probes closed_streams by its key:\n{plan}"
            );
            assert!(
                !plan.contains("event_archive"),
                "{name} never reads the archive:\n{plan}"
            );
        }
        if name.starts_with("append") {
            assert!(
                plan.contains("One-Time Filter") || plan.contains("InitPlan"),
                "{name} checks the stream once per statement:\n{plan}"
            );
        }
        if name.starts_with("read_all") || name.starts_with("read_feed") {
            assert!(
                plan.contains("event_archive_feed"),
                "{name} reads the archive by its feed index:\n{plan}"
            );
        }
    }
}

/// Writers append to many streams while an archiver closes and archives each stream as soon as
/// its writer is done, and a reader follows the feed from the start all along: the reader gets
/// every event exactly once, in feed order, each stream's versions in order, whether it read
/// an event before or after its stream was archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_loses_nothing_while_streams_are_archived_under_a_reader() {
    const STREAMS: u64 = 24;
    const EVENTS: u64 = 15;
    let store = Arc::new(tests::pg_store().await);
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let total = usize::try_from(STREAMS * EVENTS).unwrap();
            let mut after = GlobalPosition::START;
            let mut seen = Vec::new();
            // The feed waits for every transaction of the cluster older than its events: on a
            // shared server, that can take a while.
            let deadline = tokio::time::Instant::now() + Duration::from_mins(3);
            while seen.len() < total {
                let page = store.read_all(after, 7).await.unwrap();
                for e in &page {
                    assert!(e.position > after, "positions strictly increase");
                    after = e.position;
                    seen.push((e.event_id, e.stream_id.clone(), e.version));
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reader stalled at {} of {total} events",
                    seen.len()
                );
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            // Nothing more: no event a second time.
            assert!(store.read_all(after, 7).await.unwrap().is_empty());
            seen
        })
    };
    let (archived_tx, mut archived_rx) = tokio::sync::mpsc::unbounded_channel::<StreamId>();
    let mut writers = Vec::new();
    for s in 0..STREAMS {
        let store = Arc::clone(&store);
        let archived_tx = archived_tx.clone();
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("Churn-{s}-{}", uuid::Uuid::now_v7())).unwrap();
            let mut ids = Vec::new();
            for n in 0..EVENTS {
                let e = event(n);
                ids.push(e.event_id);
                store
                    .append(&stream, ExpectedVersion::Exact(n), vec![e])
                    .await
                    .unwrap();
            }
            archived_tx.send(stream).unwrap();
            ids
        }));
    }
    drop(archived_tx);
    let archiver = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut archived = 0;
            while let Some(stream) = archived_rx.recv().await {
                assert_eq!(store.close_stream(&stream).await.unwrap(), EVENTS);
                assert_eq!(store.archive_stream(&stream).await.unwrap(), EVENTS);
                archived += 1;
            }
            archived
        })
    };
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(archiver.await.unwrap(), STREAMS);
    let seen = reader.await.unwrap();
    let unique: HashSet<_> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert_eq!(unique, written, "every event, none missing");
    let mut versions: HashMap<StreamId, u64> = HashMap::new();
    for (_, stream, version) in &seen {
        let last = versions.entry(stream.clone()).or_default();
        assert_eq!(*version, *last + 1, "{stream}: versions in order");
        *last = *version;
    }
    let hot: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(hot, 0, "every event left the hot table");
}

/// A stream whose outbox events the relay has not published stays in the hot table (the relay
/// reads them there): archiving refuses, naming the stream, until the relay is past them.
#[tokio::test]
async fn archiving_waits_for_the_outbox_relay() {
    let plain = tests::pg_store().await;
    let store = plain.clone().with_outbox(true);
    let stream = StreamId::new("Outboxed-1").unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    store.close_stream(&stream).await.unwrap();
    let refused = store.archive_stream(&stream).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Archive { stream: s, reason } if *s == stream && reason.contains("outbox")),
        "{refused}"
    );
    let publisher = MemoryPublisher::new();
    let relay = dtx_postgres::PgOutbox::new(plain.pool().clone())
        .relay(publisher.clone(), RelayOptions::default());
    relay.run_until_idle().await.unwrap();
    assert_eq!(publisher.count(), 2);
    assert_eq!(store.archive_stream(&stream).await.unwrap(), 2);
}

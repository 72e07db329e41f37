//! The inbox's contract, on PostgreSQL and in memory: a message's effect commits once with its
//! record, whatever concurrent deliveries, failures and rollbacks do; dead letters keep the
//! message as delivered and come back when requeued; partition offsets move only for the
//! instance holding them, from where they stand.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::inbox::{
    Consumer, DeadLetterStatus, Handled, InboundMessage, Inbox, InboxStore, MemoryInbox,
    OffsetAdvance, PartitionKey, Refused,
};
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, MemoryUnitOfWork, UnitOfWork};
use dtx_postgres::{PgInbox, PgUnitOfWork};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Counts committed effects: through `effects` on PostgreSQL, on commit in memory. Fails while
/// `failing` is set.
#[derive(Clone, Default)]
struct Counter {
    committed: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Consumer for Counter {
    const NAME: &'static str = "counter";

    fn event_types() -> &'static [&'static str] {
        &["Paid"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            // Let concurrent deliveries of the same message overlap.
            tokio::task::yield_now().await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(HandlerError::failed("the payment service is down"));
            }
            if uow.backend() == "postgres" {
                let conn = PgUnitOfWork::connection_of(uow)
                    .await
                    .map_err(HandlerError::failed)?;
                sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                    .bind(message.message_id)
                    .execute(conn)
                    .await
                    .map_err(HandlerError::failed)?;
            } else {
                let committed = self.committed.clone();
                MemoryUnitOfWork::downcast(uow)
                    .map_err(HandlerError::failed)?
                    .on_commit(move || {
                        committed.fetch_add(1, Ordering::SeqCst);
                    });
            }
            Ok(())
        })
    }
}

/// One backend under test.
struct Backend {
    inbox: Inbox,
    pool: Option<sqlx::PgPool>,
    counter: Counter,
}

impl Backend {
    fn memory() -> Self {
        Self {
            inbox: Inbox::new(MemoryInbox::new()),
            pool: None,
            counter: Counter::default(),
        }
    }

    async fn postgres() -> Self {
        let pool = dtx_postgres::testing::fresh_database(24).await.unwrap();
        sqlx::query("CREATE TABLE effects (message_id UUID NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        Self {
            inbox: Inbox::new(PgInbox::new(pool.clone())),
            pool: Some(pool),
            counter: Counter::default(),
        }
    }

    /// Committed effects of `id`.
    async fn effects(&self, id: Uuid) -> usize {
        match &self.pool {
            Some(pool) => {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM effects WHERE message_id = $1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .unwrap();
                usize::try_from(n).unwrap()
            }
            None => self.counter.committed.load(Ordering::SeqCst),
        }
    }

    fn store(&self) -> &Arc<dyn InboxStore> {
        self.inbox.store()
    }
}

fn paid() -> InboundMessage {
    let mut message = InboundMessage::new(Uuid::now_v7(), "Paid", br#"{"amount":12}"#.to_vec());
    message.key = Some("Order-1".to_owned());
    message
}

async fn backends() -> Vec<(&'static str, Backend)> {
    vec![
        ("memory", Backend::memory()),
        ("postgres", Backend::postgres().await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_message_apply_it_once() {
    for (name, backend) in backends().await {
        let backend = Arc::new(backend);
        for _ in 0..5 {
            let message = paid();
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let backend = backend.clone();
                    let message = message.clone();
                    tokio::spawn(async move {
                        // A delivery refused while another holds the message (in memory) is
                        // redelivered, as a broker would.
                        loop {
                            match backend.inbox.receive(&backend.counter, &message).await {
                                Ok(handled) => return handled,
                                Err(Refused::Retry(_)) => tokio::task::yield_now().await,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            let mut applied = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Handled::Applied => applied += 1,
                    Handled::Duplicate => {}
                    Handled::Ignored => panic!("{name}: a handled type was ignored"),
                }
            }
            assert_eq!(applied, 1, "{name}: one delivery applies it");
            if backend.pool.is_some() {
                assert_eq!(backend.effects(message.message_id).await, 1, "{name}");
            }
            assert!(
                backend
                    .store()
                    .contains("counter", message.message_id)
                    .await
                    .unwrap()
            );
        }
        if backend.pool.is_none() {
            assert_eq!(
                backend.counter.committed.load(Ordering::SeqCst),
                5,
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_failed_handler_leaves_no_record_and_an_unhandled_type_is_recorded() {
    for (name, backend) in backends().await {
        let message = paid();
        backend.counter.failing.store(true, Ordering::SeqCst);
        let refused = backend.inbox.receive(&backend.counter, &message).await;
        assert!(
            matches!(refused, Err(Refused::Retry(_))),
            "{name}: {refused:?}"
        );
        assert!(
            !backend
                .store()
                .contains("counter", message.message_id)
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(backend.effects(message.message_id).await, 0, "{name}");

        backend.counter.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            backend
                .inbox
                .receive(&backend.counter, &message)
                .await
                .unwrap(),
            Handled::Applied,
            "{name}: the redelivery applies"
        );
        assert_eq!(backend.effects(message.message_id).await, 1, "{name}");

        let other = InboundMessage::new(Uuid::now_v7(), "Refunded", b"{}".to_vec());
        assert_eq!(
            backend
                .inbox
                .receive(&backend.counter, &other)
                .await
                .unwrap(),
            Handled::Ignored,
            "{name}"
        );
        assert_eq!(
            backend
                .inbox
                .receive(&backend.counter, &other)
                .await
                .unwrap(),
            Handled::Duplicate,
            "{name}"
        );
        // The same message id is another message for another consumer.
        let mut uow = backend.store().begin().await.unwrap();
        assert!(
            backend
                .store()
                .record_in(uow.as_mut(), "audit", &message)
                .await
                .unwrap(),
            "{name}"
        );
        uow.rollback_boxed().await.unwrap();
        assert!(
            !backend
                .store()
                .contains("audit", message.message_id)
                .await
                .unwrap(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn dead_letters_keep_the_message_and_come_back_when_requeued() {
    for (name, backend) in backends().await {
        let mut message = InboundMessage::from_headers(
            [
                ("dtx-event-id".to_owned(), Uuid::now_v7().to_string()),
                ("dtx-event-type".to_owned(), "Paid".to_owned()),
                ("dtx-stream-id".to_owned(), "Order-7".to_owned()),
                ("dtx-schema-version".to_owned(), "2".to_owned()),
                (
                    "traceparent".to_owned(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
                ),
                ("x-custom".to_owned(), "kept".to_owned()),
            ],
            // Not UTF-8: a payload is stored as delivered.
            vec![0xff, 0xfe, b'{', 0],
            "payments.Order-7 #12",
            5,
        )
        .unwrap();
        message.correlation_id = Some(Uuid::now_v7());
        backend
            .inbox
            .dead_letter::<Counter>(&message, "handler kept failing", 5)
            .await
            .unwrap();
        let letters = backend.store().dead_letters(Some("counter")).await.unwrap();
        assert_eq!(letters.len(), 1, "{name}");
        let letter = &letters[0];
        assert_eq!(letter.message, message, "{name}: the message as delivered");
        assert_eq!(letter.error, "handler kept failing");
        assert_eq!(letter.attempts, 5);
        assert_eq!(letter.status, DeadLetterStatus::Dead);
        assert!(
            backend
                .store()
                .dead_letters(Some("other"))
                .await
                .unwrap()
                .is_empty()
        );
        // A redelivery of a dead-lettered message is a duplicate.
        assert_eq!(
            backend
                .inbox
                .receive(&backend.counter, &message)
                .await
                .unwrap(),
            Handled::Duplicate,
            "{name}"
        );
        // Nothing requeued: nothing redelivered.
        assert_eq!(
            backend
                .inbox
                .redeliver_requeued(&backend.counter, 10)
                .await
                .unwrap(),
            0
        );

        // Requeued while the cause persists: back to dead, one more attempt.
        assert!(
            backend
                .store()
                .requeue("counter", message.message_id)
                .await
                .unwrap()
        );
        assert!(
            !backend
                .store()
                .requeue("counter", Uuid::now_v7())
                .await
                .unwrap()
        );
        backend.counter.failing.store(true, Ordering::SeqCst);
        assert_eq!(
            backend
                .inbox
                .redeliver_requeued(&backend.counter, 10)
                .await
                .unwrap(),
            0
        );
        let letters = backend.store().dead_letters(None).await.unwrap();
        assert_eq!(letters[0].status, DeadLetterStatus::Dead, "{name}");
        assert_eq!(letters[0].attempts, 6, "{name}");
        assert!(
            letters[0].error.contains("down"),
            "{name}: {}",
            letters[0].error
        );
        assert_eq!(backend.effects(message.message_id).await, 0, "{name}");

        // Fixed: requeued, applied once, gone from the dead letters.
        backend.counter.failing.store(false, Ordering::SeqCst);
        assert!(
            backend
                .store()
                .requeue("counter", message.message_id)
                .await
                .unwrap()
        );
        assert_eq!(
            backend
                .inbox
                .redeliver_requeued(&backend.counter, 10)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            backend
                .inbox
                .redeliver_requeued(&backend.counter, 10)
                .await
                .unwrap(),
            0
        );
        assert!(
            backend.store().dead_letters(None).await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(backend.effects(message.message_id).await, 1, "{name}");

        // Discarding: gone, still recorded as received.
        let other = paid();
        backend
            .inbox
            .dead_letter::<Counter>(&other, "refused", 1)
            .await
            .unwrap();
        assert!(
            backend
                .store()
                .discard("counter", other.message_id)
                .await
                .unwrap()
        );
        assert!(
            !backend
                .store()
                .discard("counter", other.message_id)
                .await
                .unwrap()
        );
        assert!(
            backend
                .store()
                .contains("counter", other.message_id)
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn messages_without_usable_headers_are_reported_with_a_stand_in_id() {
    let (problem, message) = InboundMessage::from_headers(
        [("dtx-event-type".to_owned(), "Paid".to_owned())],
        b"{}".to_vec(),
        "payments.x #3",
        1,
    )
    .unwrap_err();
    assert!(problem.to_string().contains("dtx-event-id"), "{problem}");
    assert_eq!(
        message.message_id,
        InboundMessage::stand_in_id("payments.x #3")
    );
    assert_eq!(
        message.message_id,
        InboundMessage::stand_in_id("payments.x #3")
    );
    assert_ne!(
        message.message_id,
        InboundMessage::stand_in_id("payments.x #4")
    );

    let (problem, _) = InboundMessage::from_headers(
        [
            ("dtx-event-id".to_owned(), Uuid::now_v7().to_string()),
            ("dtx-event-type".to_owned(), "Paid".to_owned()),
            ("dtx-correlation-id".to_owned(), "not-a-uuid".to_owned()),
        ],
        b"{}".to_vec(),
        "payments.x #5",
        1,
    )
    .unwrap_err();
    assert!(
        problem.to_string().contains("dtx-correlation-id"),
        "{problem}"
    );
}

#[tokio::test]
async fn partition_offsets_move_only_for_their_holder_from_where_they_stand() {
    for (name, backend) in backends().await {
        let store = backend.store();
        let key = PartitionKey::new("counter", "payments", 3);
        let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
        let lease = Duration::from_secs(30);
        assert_eq!(
            store.acquire_partition(&key, me, lease, 0).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            store
                .acquire_partition(&key, other, lease, 0)
                .await
                .unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            store.acquire_partition(&key, me, lease, 99).await.unwrap(),
            Some(0),
            "{name}"
        );

        let step = OffsetAdvance {
            owner: me,
            from: 0,
            to: 10,
            lease,
        };
        let mut uow = store.begin().await.unwrap();
        store
            .advance_partition_in(uow.as_mut(), &key, &step)
            .await
            .unwrap();
        uow.rollback_boxed().await.unwrap();
        assert_eq!(
            store.partitions(Some("counter")).await.unwrap()[0].next_offset,
            0,
            "{name}"
        );

        let mut uow = store.begin().await.unwrap();
        store
            .advance_partition_in(uow.as_mut(), &key, &step)
            .await
            .unwrap();
        uow.commit_boxed().await.unwrap();
        let offsets = store.partitions(None).await.unwrap();
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].next_offset, 10, "{name}");
        assert_eq!(offsets[0].owner, Some(me));

        // From a stale offset, or by an instance that holds nothing: refused.
        let mut uow = store.begin().await.unwrap();
        let stale = store.advance_partition_in(uow.as_mut(), &key, &step).await;
        assert!(
            matches!(stale, Err(dtx::Error::Inbox { .. })),
            "{name}: {stale:?}"
        );
        drop(uow);
        let mut uow = store.begin().await.unwrap();
        let foreign = OffsetAdvance {
            owner: other,
            from: 10,
            to: 20,
            lease,
        };
        assert!(
            store
                .advance_partition_in(uow.as_mut(), &key, &foreign)
                .await
                .is_err(),
            "{name}"
        );
        drop(uow);

        // Released: another instance takes it where it stands.
        store.release_partition(&key, me).await.unwrap();
        assert_eq!(
            store
                .acquire_partition(&key, other, lease, 0)
                .await
                .unwrap(),
            Some(10),
            "{name}"
        );
        // An expired lease is taken over.
        store
            .acquire_partition(&key, other, Duration::ZERO, 0)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            store.acquire_partition(&key, me, lease, 0).await.unwrap(),
            Some(10),
            "{name}"
        );
        // The old holder's move is refused: its batch rolls back.
        let mut uow = store.begin().await.unwrap();
        let late = OffsetAdvance {
            owner: other,
            from: 10,
            to: 30,
            lease,
        };
        assert!(
            store
                .advance_partition_in(uow.as_mut(), &key, &late)
                .await
                .is_err(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn purge_removes_old_records_in_batches() {
    for (name, backend) in backends().await {
        for _ in 0..7 {
            backend
                .inbox
                .receive(&backend.counter, &paid())
                .await
                .unwrap();
        }
        let store = backend.store();
        assert_eq!(
            store.purge(Duration::from_hours(1), 100).await.unwrap(),
            0,
            "{name}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.purge(Duration::ZERO, 5).await.unwrap(), 5, "{name}");
        assert_eq!(store.purge(Duration::ZERO, 5).await.unwrap(), 2, "{name}");
        assert_eq!(store.purge(Duration::ZERO, 5).await.unwrap(), 0, "{name}");
    }
}

#[tokio::test]
async fn a_batch_of_records_is_new_once_per_message() {
    for (name, backend) in backends().await {
        let store = backend.store();
        let (old, a, b) = (paid(), paid(), paid());
        backend.inbox.receive(&backend.counter, &old).await.unwrap();
        let mut uow = store.begin().await.unwrap();
        let batch = [&a, &old, &b, &a];
        let fresh = store
            .record_all_in(uow.as_mut(), "counter", &batch)
            .await
            .unwrap();
        assert_eq!(fresh, [true, false, true, false], "{name}");
        uow.commit_boxed().await.unwrap();
        assert!(
            store.contains("counter", b.message_id).await.unwrap(),
            "{name}"
        );

        // Through the inbox: the handlers of the new ones run, in order; a refusal names its
        // index and the caller rolls everything back.
        let (c, d) = (paid(), paid());
        let mut uow = store.begin().await.unwrap();
        let handled = backend
            .inbox
            .handle_all_in(&backend.counter, &[&c, &a, &d], uow.as_mut())
            .await
            .unwrap();
        assert_eq!(
            handled,
            [Handled::Applied, Handled::Duplicate, Handled::Applied],
            "{name}"
        );
        uow.rollback_boxed().await.unwrap();
        assert!(
            !store.contains("counter", c.message_id).await.unwrap(),
            "{name}"
        );

        backend.counter.failing.store(true, Ordering::SeqCst);
        let mut uow = store.begin().await.unwrap();
        let refused = backend
            .inbox
            .handle_all_in(&backend.counter, &[&a, &c], uow.as_mut())
            .await
            .unwrap_err();
        assert_eq!(
            refused.0, 1,
            "{name}: the first new message's handler failed"
        );
        uow.rollback_boxed().await.unwrap();
        backend.counter.failing.store(false, Ordering::SeqCst);
    }
}

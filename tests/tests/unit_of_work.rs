//! One unit of work that every component joins, on PostgreSQL and in memory: a command, a saga
//! start, an idempotency claim and its result, an outbox message (and on PostgreSQL the user's
//! own SQL) commit together or not at all.

#![allow(missing_docs, reason = "test types")]
#![allow(
    clippy::unwrap_used,
    clippy::unnecessary_wraps,
    clippy::unused_self,
    reason = "tests; handlers take the shapes the macros require"
)]

use dtx::cqrs::{CommandBus, CommandError, Committed};
use dtx::idempotency::{
    Claim, ClaimRequest, Fingerprint, IdempotencyKey, IdempotencyStatus, IdempotencyStore, Scope,
};
use dtx::outbox::{NewOutboxMessage, Outbox};
use dtx::saga::testing::contract::Fulfil;
use dtx::saga::{Saga, SagaError, SagaOrchestrator, SagaStore};
use dtx::{
    Aggregate, Apply, DomainEvent, Error, Id, MemoryEventStore, MemoryUnitOfWork, Repository,
    SharedEventStore, UnitOfWork, command_handler,
};
use dtx_postgres::{PgIdempotencyStore, PgOutbox, PgSagaStore, PgUnitOfWork};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}
#[derive(Debug, Clone, DomainEvent)]
pub enum WalletEvent {
    Opened(Opened),
    Deposited(Deposited),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = WalletEvent)]
pub struct Wallet {
    id: Id<Wallet>,
    balance: u64,
}
impl Apply<Opened> for Wallet {
    fn apply(&mut self, _: &Opened) {}
}
impl Apply<Deposited> for Wallet {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

#[derive(Debug, Clone)]
pub struct OpenWallet {
    pub wallet_id: Id<Wallet>,
    pub owner: String,
}
#[derive(Debug, Clone)]
pub struct Deposit {
    pub wallet_id: Id<Wallet>,
    pub amount: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[command_handler]
impl Wallet {
    fn open(cmd: &OpenWallet) -> Result<Opened, Never> {
        Ok(Opened {
            owner: cmd.owner.clone(),
        })
    }
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Never> {
        Ok(Deposited { amount: cmd.amount })
    }
}

/// What one backend gives the scenario.
struct Components {
    events: SharedEventStore,
    bus: CommandBus,
    sagas: SagaOrchestrator,
    keys: Arc<dyn IdempotencyStore>,
    outbox: Arc<dyn Outbox>,
}

impl Components {
    fn new(
        events: SharedEventStore,
        sagas: Arc<dyn SagaStore>,
        keys: Arc<dyn IdempotencyStore>,
        outbox: Arc<dyn Outbox>,
    ) -> Self {
        let bus = CommandBus::builder()
            .store(Arc::clone(&events))
            .registry()
            .build()
            .unwrap();
        let sagas = SagaOrchestrator::builder(sagas)
            .events(Arc::clone(&events))
            .saga(Fulfil::definition())
            .build()
            .unwrap();
        Self {
            events,
            bus,
            sagas,
            keys,
            outbox,
        }
    }
}

/// What the business operation wrote, to look for afterwards.
struct Written {
    wallet: Id<Wallet>,
    saga: Uuid,
    request: ClaimRequest,
}

fn request() -> ClaimRequest {
    ClaimRequest::new(
        Scope::new("customer-1").unwrap(),
        IdempotencyKey::new(Uuid::now_v7().to_string()).unwrap(),
        Fingerprint::of(b"open"),
    )
}

/// The business operation, written once for both backends.
async fn operate(c: &Components, uow: &mut dyn UnitOfWork) -> Written {
    let request = request();
    let Claim::Claimed(lease) = c.keys.claim_in(uow, &request).await.unwrap() else {
        panic!("a fresh key is claimed")
    };
    let wallet = Id::<Wallet>::new();
    let opened: Committed = c
        .bus
        .execute_in(
            uow,
            OpenWallet {
                wallet_id: wallet,
                owner: "ada".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(opened.version, 1);
    // A second command in the same unit of work sees the first one's event.
    let deposited = c
        .bus
        .execute_in(
            uow,
            Deposit {
                wallet_id: wallet,
                amount: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(deposited.version, 2);
    let saga = c.sagas.start_in(uow, Fulfil::default()).await.unwrap();
    let message = NewOutboxMessage::new("wallets", "WalletOpened", &wallet).unwrap();
    c.outbox.enqueue_in(uow, vec![message]).await.unwrap();
    c.keys.complete_in(uow, &lease, b"opened").await.unwrap();
    Written {
        wallet,
        saga,
        request,
    }
}

async fn stored_version(c: &Components, wallet: &Id<Wallet>) -> u64 {
    c.events
        .stream_version(&Wallet::stream_id(wallet).unwrap())
        .await
        .unwrap()
}

/// Asserts that everything the operation wrote is there (`true`) or that none of it is.
async fn assert_all_or_nothing(c: &Components, written: &Written, all: bool) {
    let version = stored_version(c, &written.wallet).await;
    assert_eq!(version, if all { 2 } else { 0 }, "the events");
    let saga = c.sagas.status(written.saga).await;
    if all {
        assert_eq!(saga.unwrap().name, Fulfil::NAME, "the saga");
    } else {
        assert!(matches!(saga, Err(SagaError::NotFound { .. })), "the saga");
    }
    let record = c
        .keys
        .load(&written.request.scope, &written.request.key)
        .await
        .unwrap();
    if all {
        let record = record.expect("the idempotency record");
        assert_eq!(record.status, IdempotencyStatus::Completed);
        assert_eq!(record.response.as_deref(), Some(&b"opened"[..]));
    } else {
        assert!(record.is_none(), "the idempotency record: {record:?}");
        // The key is free again.
        assert!(matches!(
            c.keys.claim(&written.request).await.unwrap(),
            Claim::Claimed(_)
        ));
    }
}

/// A version conflict inside a unit of work is a typed error, and the unit of work leaves
/// nothing behind.
async fn conflict_leaves_nothing(c: &Components, uow: &mut dyn UnitOfWork) -> (Id<Wallet>, Uuid) {
    let wallet = Id::<Wallet>::new();
    // Another writer opened the wallet already.
    let _: Committed = c
        .bus
        .execute(OpenWallet {
            wallet_id: wallet,
            owner: "first".into(),
        })
        .await
        .unwrap();
    let saga = c.sagas.start_in(uow, Fulfil::default()).await.unwrap();
    // Stale state: the repository of this unit of work decides on version 0.
    let repo = Repository::<Wallet>::shared(Arc::clone(&c.events), &dtx::DtxConfig::default());
    let mut root = dtx::AggregateRoot::<Wallet>::new(wallet);
    root.record([Opened {
        owner: "second".into(),
    }])
    .unwrap();
    let conflict = repo.save_in(uow, &mut root).await.unwrap_err();
    assert!(
        matches!(
            &conflict,
            Error::Conflict { stream, actual: 1, .. } if *stream == Wallet::stream_id(&wallet).unwrap()
        ),
        "{conflict:?}"
    );
    (wallet, saga)
}

async fn assert_conflict_left_nothing(c: &Components, wallet: &Id<Wallet>, saga: Uuid) {
    assert_eq!(
        stored_version(c, wallet).await,
        1,
        "only the other writer's event"
    );
    assert!(matches!(
        c.sagas.status(saga).await,
        Err(SagaError::NotFound { .. })
    ));
}

fn memory() -> (Components, dtx::outbox::MemoryOutbox) {
    let outbox = dtx::outbox::MemoryOutbox::new();
    let events = Arc::new(MemoryEventStore::new()) as SharedEventStore;
    let c = Components::new(
        events,
        Arc::new(dtx::saga::MemorySagaStore::new()),
        Arc::new(dtx::idempotency::MemoryIdempotencyStore::new()),
        Arc::new(outbox.clone()),
    );
    (c, outbox)
}

#[tokio::test]
async fn memory_rollback_leaves_nothing_and_commit_leaves_everything() {
    let (c, outbox) = memory();

    let mut uow = MemoryUnitOfWork::new();
    let written = operate(&c, &mut uow).await;
    // Nothing is visible before the commit.
    assert_eq!(stored_version(&c, &written.wallet).await, 0);
    assert_eq!(outbox.counts().pending, 0);
    uow.rollback().await.unwrap();
    assert_all_or_nothing(&c, &written, false).await;
    assert_eq!(outbox.counts().pending, 0);

    // Dropped without a commit: the same as a rollback.
    let mut uow = MemoryUnitOfWork::new();
    let written = operate(&c, &mut uow).await;
    drop(uow);
    assert_all_or_nothing(&c, &written, false).await;

    let mut uow = MemoryUnitOfWork::new();
    let written = operate(&c, &mut uow).await;
    uow.commit().await.unwrap();
    assert_all_or_nothing(&c, &written, true).await;
    assert_eq!(outbox.counts().pending, 1);
    let wallet = Repository::<Wallet>::shared(c.events.clone(), &dtx::DtxConfig::default())
        .load(&written.wallet)
        .await
        .unwrap();
    assert_eq!(wallet.state().balance, 5);
}

#[tokio::test]
async fn memory_conflict_is_typed_and_leaves_nothing() {
    let (c, _) = memory();
    let mut uow = MemoryUnitOfWork::new();
    let (wallet, saga) = conflict_leaves_nothing(&c, &mut uow).await;
    uow.rollback().await.unwrap();
    assert_conflict_left_nothing(&c, &wallet, saga).await;

    // A stream moved by another writer between the read and the commit fails the commit, and
    // the commit writes nothing at all.
    let wallet = Id::<Wallet>::new();
    let _: Committed = c
        .bus
        .execute(OpenWallet {
            wallet_id: wallet,
            owner: "ada".into(),
        })
        .await
        .unwrap();
    let mut uow = MemoryUnitOfWork::new();
    let saga = c.sagas.start_in(&mut uow, Fulfil::default()).await.unwrap();
    c.bus
        .execute_in(
            &mut uow,
            Deposit {
                wallet_id: wallet,
                amount: 1,
            },
        )
        .await
        .unwrap();
    let _: Committed = c
        .bus
        .execute(Deposit {
            wallet_id: wallet,
            amount: 2,
        })
        .await
        .unwrap();
    let error = uow.commit().await.unwrap_err();
    assert!(
        matches!(error, Error::Conflict { actual: 2, .. }),
        "{error:?}"
    );
    assert_eq!(stored_version(&c, &wallet).await, 2);
    assert!(matches!(
        c.sagas.status(saga).await,
        Err(SagaError::NotFound { .. })
    ));
}

#[tokio::test]
async fn memory_store_refuses_a_postgres_unit_of_work() {
    let (c, _) = memory();
    let pool = dtx_postgres::testing::fresh_database(2).await.unwrap();
    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    let error = c.sagas.start_in(&mut uow, Fulfil::default()).await;
    assert!(
        matches!(
            error,
            Err(SagaError::Store(Error::UnitOfWork {
                expected: "memory",
                actual: "postgres"
            }))
        ),
        "{error:?}"
    );
}

async fn postgres() -> (Components, PgOutbox) {
    let events = tests::pg_store().await;
    let pool = events.pool().clone();
    sqlx::query("CREATE TABLE audit (wallet uuid PRIMARY KEY, note text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let outbox = PgOutbox::new(pool.clone());
    let c = Components::new(
        Arc::new(events),
        Arc::new(PgSagaStore::new(pool.clone())),
        Arc::new(PgIdempotencyStore::new(pool.clone())),
        Arc::new(outbox.clone()),
    );
    (c, outbox)
}

async fn audit(uow: &mut PgUnitOfWork, wallet: &Id<Wallet>) {
    sqlx::query("INSERT INTO audit (wallet, note) VALUES ($1, 'opened')")
        .bind(wallet.uuid())
        .execute(uow.connection())
        .await
        .unwrap();
}

async fn audited(pool: &sqlx::PgPool, wallet: &Id<Wallet>) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit WHERE wallet = $1)")
        .bind(wallet.uuid())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_rollback_leaves_nothing_and_commit_leaves_everything() {
    let (c, outbox) = postgres().await;
    let pool = outbox.pool().clone();
    let before = outbox.counts().await.unwrap().pending;

    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    let written = operate(&c, &mut uow).await;
    audit(&mut uow, &written.wallet).await;
    assert_eq!(
        stored_version(&c, &written.wallet).await,
        0,
        "not yet committed"
    );
    uow.rollback().await.unwrap();
    assert_all_or_nothing(&c, &written, false).await;
    assert!(!audited(&pool, &written.wallet).await);
    assert_eq!(outbox.counts().await.unwrap().pending, before);

    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    let written = operate(&c, &mut uow).await;
    audit(&mut uow, &written.wallet).await;
    uow.commit().await.unwrap();
    assert_all_or_nothing(&c, &written, true).await;
    assert!(audited(&pool, &written.wallet).await);
    assert_eq!(outbox.counts().await.unwrap().pending, before + 1);
}

#[tokio::test]
async fn postgres_conflict_is_typed_and_leaves_nothing() {
    let (c, outbox) = postgres().await;
    let pool = outbox.pool().clone();
    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    let (wallet, saga) = conflict_leaves_nothing(&c, &mut uow).await;
    uow.rollback().await.unwrap();
    assert_conflict_left_nothing(&c, &wallet, saga).await;

    // Through the bus: a creating command on a wallet that exists is `AlreadyExists`, typed.
    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    let again = c
        .bus
        .execute_in(
            &mut uow,
            OpenWallet {
                wallet_id: wallet,
                owner: "again".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, CommandError::AlreadyExists { .. }),
        "{again:?}"
    );
    uow.rollback().await.unwrap();
    assert_eq!(stored_version(&c, &wallet).await, 1);
}

#[tokio::test]
async fn postgres_store_refuses_a_memory_unit_of_work() {
    let (c, _) = postgres().await;
    let mut uow = MemoryUnitOfWork::new();
    let error = c
        .bus
        .execute_in(
            &mut uow,
            OpenWallet {
                wallet_id: Id::new(),
                owner: "ada".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CommandError::Dtx(Error::UnitOfWork {
                expected: "postgres",
                actual: "memory"
            })
        ),
        "{error:?}"
    );
    // The memory unit of work holds nothing and commits nothing.
    uow.commit().await.unwrap();
}

/// Many tasks commit in-memory units of work that each append to two streams (shared between
/// tasks, so commits conflict), while a reader watches the global feed: the two streams of a
/// pair always hold as many events as each other, in every snapshot of the feed and at the end,
/// so no reader ever sees a part of a unit of work, and a conflicting commit writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_commits_are_atomic_under_concurrent_writers_and_readers() {
    use dtx::{EventStore, ExpectedVersion, GlobalPosition, NewEvent, StreamId};
    use std::collections::HashMap;

    const TASKS: usize = 8;
    const ROUNDS: usize = 60;
    const PAIRS: usize = 3;
    let store = dtx::MemoryEventStore::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let reader = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut snapshots = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let feed = store
                    .read_all(GlobalPosition::START, usize::MAX)
                    .await
                    .unwrap();
                let mut counts: HashMap<String, usize> = HashMap::new();
                for event in &feed {
                    *counts.entry(event.stream_id.to_string()).or_default() += 1;
                }
                for pair in 0..PAIRS {
                    let left = counts.get(&format!("left-{pair}")).copied().unwrap_or(0);
                    let right = counts.get(&format!("right-{pair}")).copied().unwrap_or(0);
                    assert_eq!(left, right, "a reader saw half of a unit of work");
                }
                snapshots += 1;
                tokio::task::yield_now().await;
            }
            snapshots
        })
    };

    let writers = (0..TASKS).map(|task| {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut committed, mut conflicted) = (0, 0);
            for round in 0..ROUNDS {
                let pair = (task + round) % PAIRS;
                let mut uow = MemoryUnitOfWork::new();
                let mut staged = Ok(());
                for side in ["left", "right"] {
                    let stream = StreamId::new(format!("{side}-{pair}")).unwrap();
                    let version = store.stream_version(&stream).await.unwrap();
                    let event = NewEvent::from_json("Moved", &(task, round)).unwrap();
                    tokio::task::yield_now().await;
                    // Decided on the version read: another task may move it before the append
                    // (a conflict now) or before the commit (a conflict then).
                    staged = staged.and(
                        store
                            .append_in(
                                &mut uow,
                                &stream,
                                ExpectedVersion::Exact(version),
                                vec![event],
                            )
                            .await
                            .map(drop),
                    );
                }
                let outcome = match staged {
                    Ok(()) => uow.commit().await,
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(()) => committed += 1,
                    Err(Error::Conflict { .. }) => conflicted += 1,
                    Err(other) => panic!("unexpected: {other:?}"),
                }
            }
            (committed, conflicted)
        })
    });
    let mut committed = 0;
    for writer in writers.collect::<Vec<_>>() {
        let (ok, _) = writer.await.unwrap();
        committed += ok;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);

    let mut total = 0;
    for pair in 0..PAIRS {
        let left = store
            .stream_version(&StreamId::new(format!("left-{pair}")).unwrap())
            .await
            .unwrap();
        let right = store
            .stream_version(&StreamId::new(format!("right-{pair}")).unwrap())
            .await
            .unwrap();
        assert_eq!(left, right, "pair {pair}");
        total += left;
    }
    assert_eq!(
        total,
        u64::try_from(committed).unwrap(),
        "every commit wrote both events, every conflict none"
    );
    assert!(committed > 0);
}

/// A unit of work whose transaction a failed statement of the caller's aborted: PostgreSQL
/// answers its `COMMIT` with `ROLLBACK`, and the commit is `Error::RolledBack`, never `Ok`;
/// the events appended before the failure are not stored.
#[tokio::test]
async fn postgres_commit_of_an_aborted_transaction_is_an_error() {
    let store = tests::pg_store().await;
    let stream = dtx::StreamId::new(format!("aborted-{}", Uuid::now_v7())).unwrap();
    let mut uow = PgUnitOfWork::begin(store.pool()).await.unwrap();
    let event = dtx::NewEvent::from_json("Deposited", &Deposited { amount: 1 }).unwrap();
    dtx::EventStore::append_in(
        &store,
        &mut uow,
        &stream,
        dtx::ExpectedVersion::NoStream,
        vec![event],
    )
    .await
    .unwrap();
    sqlx::query("SELECT 1/0")
        .execute(uow.connection())
        .await
        .unwrap_err();
    let committed = uow.commit().await;
    assert!(
        matches!(committed, Err(Error::RolledBack { .. })),
        "{committed:?}"
    );
    assert_eq!(
        dtx::EventStore::stream_version(&store, &stream)
            .await
            .unwrap(),
        0
    );
}

/// A deferred unit of work (the HTTP layer's one-commit mode on PostgreSQL) writes its staged
/// appends and the completed idempotency record in one statement at commit. A stream that moved
/// on meanwhile (a version taken, or a stream shorter than expected) or a key stored meanwhile
/// fails the whole statement: a typed error, and nothing of it is stored.
#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario per way a commit is refused"
)]
async fn postgres_deferred_commit_is_all_or_nothing_with_typed_conflicts() {
    use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
    let events = tests::pg_store().await;
    let keys = PgIdempotencyStore::new(events.pool().clone());
    let wait = std::time::Duration::from_secs(30);
    let event = || NewEvent::from_json("Noted", &serde_json::json!({"n": 1})).unwrap();
    let stream = || StreamId::new(format!("Deferred-{}", Uuid::now_v7())).unwrap();
    let length = |s: StreamId| {
        let events = events.clone();
        async move { events.read_stream(&s, 1, 100).await.unwrap().len() }
    };
    let stored = |request: ClaimRequest| {
        let keys = keys.clone();
        async move { keys.load(&request.scope, &request.key).await.unwrap() }
    };

    // Committed: the events and the record, in one statement.
    let done = request();
    let (mut uow, lease) = keys.begin_deferred(&done, wait).await.unwrap().unwrap();
    let s = stream();
    let appended = events
        .append_in(
            &mut *uow,
            &s,
            ExpectedVersion::NoStream,
            vec![event(), event()],
        )
        .await
        .unwrap();
    assert_eq!((appended.first_version, appended.last_version), (1, 2));
    assert_eq!(length(s.clone()).await, 0, "staged, not written");
    keys.complete_in(&mut *uow, &lease, b"done").await.unwrap();
    uow.commit_boxed().await.unwrap();
    assert_eq!(length(s.clone()).await, 2);
    let record = stored(done.clone()).await.unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed);
    assert_eq!(record.response.as_deref(), Some(&b"done"[..]));

    // Each expectation that no longer holds at commit: NoStream on a stream created meanwhile,
    // Exact(2) on a stream moved to 3 meanwhile, Exact(5) on a stream at 2.
    for (expected, before, meanwhile, actual) in [
        (ExpectedVersion::NoStream, 0, 1, 1),
        (ExpectedVersion::Exact(2), 2, 1, 3),
        (ExpectedVersion::Exact(5), 2, 0, 2),
    ] {
        let s = stream();
        if before > 0 {
            let batch = (0..before).map(|_| event()).collect();
            events
                .append(&s, ExpectedVersion::NoStream, batch)
                .await
                .unwrap();
        }
        let request = request();
        let (mut uow, lease) = keys.begin_deferred(&request, wait).await.unwrap().unwrap();
        events
            .append_in(&mut *uow, &s, expected, vec![event()])
            .await
            .unwrap();
        if meanwhile > 0 {
            events
                .append(&s, ExpectedVersion::Any, vec![event()])
                .await
                .unwrap();
        }
        keys.complete_in(&mut *uow, &lease, b"never").await.unwrap();
        let error = uow.commit_boxed().await.unwrap_err();
        match &error {
            Error::Conflict {
                stream,
                expected: e,
                actual: a,
            } => {
                assert_eq!((stream, *e, *a), (&s, expected, actual), "{error}");
            }
            other => panic!("{expected}: expected a conflict, got {other:?}"),
        }
        assert_eq!(length(s.clone()).await, usize::try_from(actual).unwrap());
        assert!(
            stored(request).await.is_none(),
            "{expected}: the key is free"
        );
    }

    // A stream closed meanwhile: `StreamClosed`, nothing written.
    let s = stream();
    events
        .append(&s, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    let request = request();
    let (mut uow, lease) = keys.begin_deferred(&request, wait).await.unwrap().unwrap();
    events
        .append_in(&mut *uow, &s, ExpectedVersion::Exact(1), vec![event()])
        .await
        .unwrap();
    events.close_stream(&s).await.unwrap();
    keys.complete_in(&mut *uow, &lease, b"never").await.unwrap();
    let error = uow.commit_boxed().await.unwrap_err();
    assert!(matches!(error, Error::StreamClosed { .. }), "{error:?}");
    assert!(stored(request).await.is_none());

    // A key stored meanwhile: nothing is written, the commit is `RolledBack`.
    let (mut uow, lease) = keys.begin_deferred(&done, wait).await.unwrap().unwrap();
    let s = stream();
    events
        .append_in(&mut *uow, &s, ExpectedVersion::NoStream, vec![event()])
        .await
        .unwrap();
    keys.complete_in(&mut *uow, &lease, b"again").await.unwrap();
    let error = uow.commit_boxed().await.unwrap_err();
    assert!(matches!(error, Error::RolledBack { .. }), "{error:?}");
    assert_eq!(length(s).await, 0);
    let record = stored(done).await.unwrap();
    assert_eq!(record.response.as_deref(), Some(&b"done"[..]), "unchanged");
}

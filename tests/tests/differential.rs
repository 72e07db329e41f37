//! Model-based differential tests: random sequences of operations run against the in-memory and
//! the PostgreSQL backend of the event store, the saga store and the idempotency store, compared
//! step by step (same outcome kinds, same data; feed positions are compared by the order and
//! the reads they give, not by their values). A divergence shrinks to a minimal sequence.
//!
//! Each store runs in one database shared by all its cases; a case uses stream, saga and key
//! names of its own. The sequences are drawn from a fixed seed, so a failure reproduces;
//! `PROPTEST_CASES` sets the number of cases per store and `DIFFERENTIAL_SEED` (a number) draws
//! other sequences. Every test prints the cases and operations it tried.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use chrono::{DateTime, Duration as Minutes, TimeZone, Utc};
use dtx::idempotency::{
    Claim, ClaimRequest, DEFAULT_MAX_RESPONSE_BYTES, Fingerprint, IdempotencyKey,
    IdempotencyPolicy, IdempotencyStore, Lease, MemoryIdempotencyStore, Scope,
};
use dtx::saga::{MemorySagaStore, SagaEvent, SagaRecord, SagaStatus, SagaStore};
use dtx::{
    AppendResult, EventMetadata, EventStore, ExpectedVersion, GlobalPosition, MemoryEventStore,
    MemoryUnitOfWork, NewEvent, RecordedEvent, Snapshot, StreamId, UnitOfWork as _,
};
use dtx_postgres::{PgEventStore, PgIdempotencyStore, PgSagaStore, PgUnitOfWork};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::fmt::Debug;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The harness: one runtime, one database per test binary, fixed seeds, counted operations.

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// The database every case of this binary shares (created and migrated once).
fn pool() -> PgPool {
    static POOL: OnceLock<PgPool> = OnceLock::new();
    POOL.get_or_init(|| block_on(tests::pg_store()).pool().clone())
        .clone()
}

/// Operations applied to each backend, per store (shrinking runs included).
static EVENT_OPS: AtomicU64 = AtomicU64::new(0);
static SAGA_OPS: AtomicU64 = AtomicU64::new(0);
static IDEMPOTENCY_OPS: AtomicU64 = AtomicU64::new(0);

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `cases` random sequences of up to `max_steps` operations of the machine `M`, from the
/// fixed seed (or `DIFFERENTIAL_SEED`); panics with the shrunk sequence on a divergence.
fn run<M: StateMachineTest>(store: &str, cases: u32, max_steps: usize, ops: &AtomicU64)
where
    <M::Reference as ReferenceStateMachine>::State: Debug,
{
    let cases = env_number("PROPTEST_CASES").map_or(cases, |n| u32::try_from(n).unwrap());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&env_number("DIFFERENTIAL_SEED").unwrap_or(14).to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(config.clone(), rng);
    let strategy = M::Reference::sequential_strategy(1..=max_steps);
    let started = Instant::now();
    let result = runner.run(&strategy, |(state, transitions, seen)| {
        M::test_sequential(config.clone(), state, transitions, seen);
        Ok(())
    });
    eprintln!(
        "differential {store}: {cases} cases of up to {max_steps} operations, {} operations \
         on each backend (shrinking included), {:.1?}",
        ops.load(Ordering::Relaxed),
        started.elapsed()
    );
    if let Err(error) = result {
        panic!("{store}: the backends diverged: {error}");
    }
}

/// An outcome both backends must agree on: the value, or the error's message (which names the
/// stream, version, key or saga the same way on both).
fn outcome<T: Debug>(result: &Result<T, impl std::fmt::Display>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(error) => format!("Err({error})"),
    }
}

// ---------------------------------------------------------------------------------------------
// The event store.

const STREAMS: usize = 3;

/// A payload: storable ones of several shapes, and a few PostgreSQL refuses.
#[derive(Debug, Clone, Copy)]
enum Payload {
    Amount(u64),
    Text(usize),
    Unstorable(usize),
}

const TEXTS: [&str; 5] = [
    "plain",
    "ünïcødé",
    "emoji \u{1F600}",
    "quote \" and \\ backslash",
    "escaped \\u0000 look-alike",
];
const UNSTORABLE: [&str; 3] = [
    r#"{"text": "nul \u0000"}"#,
    r#"{"text": "lone \ud800"}"#,
    r#"{"amount": 1e999999}"#,
];

impl Payload {
    fn event(self) -> NewEvent {
        let json = match self {
            Self::Amount(n) => serde_json::json!({ "amount": n }).to_string(),
            Self::Text(i) => serde_json::json!({ "text": TEXTS[i] }).to_string(),
            Self::Unstorable(i) => UNSTORABLE[i].to_owned(),
        };
        let mut event = NewEvent::from_json("Noted", &serde_json::json!({})).unwrap();
        event.data = RawValue::from_string(json).unwrap();
        event.metadata = EventMetadata::correlated(Uuid::now_v7())
            .with_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        event
    }
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        6 => (0..100u64).prop_map(Payload::Amount),
        3 => (0..TEXTS.len()).prop_map(Payload::Text),
        1 => (0..UNSTORABLE.len()).prop_map(Payload::Unstorable),
    ]
}

#[derive(Debug, Clone)]
enum EventOp {
    /// Appends new events, or resends the events of an earlier append (`retry`) to `stream`.
    Append {
        stream: usize,
        expected: ExpectedVersion,
        events: Vec<Payload>,
        retry: Option<usize>,
    },
    /// Appends in one unit of work (new events, or resent ones of an earlier append), then
    /// commits or rolls back.
    AppendIn {
        appends: Vec<(usize, ExpectedVersion, Vec<Payload>, Option<usize>)>,
        commit: bool,
    },
    ReadStream {
        stream: usize,
        from: u64,
        max: usize,
    },
    /// Reads the feed after the `after`-th event of this case, at most `max` events.
    ReadAll {
        after: usize,
        max: usize,
    },
    StreamVersion {
        stream: usize,
    },
    SaveSnapshot {
        stream: usize,
        version: u64,
        hash: u64,
        state: u8,
    },
    LoadSnapshot {
        stream: usize,
    },
}

/// What the generator knows: each stream's version as a simple model sees it (to aim `Exact`
/// expectations near it) and how many appends were made (to pick one to retry).
#[derive(Debug, Clone, Default)]
struct EventModel {
    versions: [u64; STREAMS],
    appends: usize,
}

fn expected_near(versions: [u64; STREAMS], stream: usize) -> BoxedStrategy<ExpectedVersion> {
    let current = versions[stream];
    prop_oneof![
        2 => Just(ExpectedVersion::Any),
        1 => Just(ExpectedVersion::NoStream),
        4 => (0..=2u64).prop_map(move |d| ExpectedVersion::Exact((current + d).saturating_sub(1))),
    ]
    .boxed()
}

fn appended(versions: &mut [u64; STREAMS], stream: usize, expected: ExpectedVersion, n: usize) {
    if expected.admits(versions[stream]) {
        versions[stream] += n as u64;
    }
}

impl ReferenceStateMachine for EventModel {
    type State = Self;
    type Transition = EventOp;

    fn init_state() -> BoxedStrategy<Self> {
        Just(Self::default()).boxed()
    }

    fn transitions(state: &Self) -> BoxedStrategy<EventOp> {
        let versions = state.versions;
        let appends = state.appends;
        let append = (0..STREAMS)
            .prop_flat_map(move |stream| {
                (
                    Just(stream),
                    expected_near(versions, stream),
                    prop::collection::vec(payload(), 1..4),
                    prop::option::weighted(0.2, 0..appends.max(1)),
                )
            })
            .prop_map(move |(stream, expected, events, retry)| EventOp::Append {
                stream,
                expected,
                events,
                retry: retry.filter(|_| appends > 0),
            });
        let one_in = (0..STREAMS).prop_flat_map(move |stream| {
            (
                Just(stream),
                expected_near(versions, stream),
                prop::collection::vec(payload(), 1..3),
                prop::option::weighted(0.15, 0..appends.max(1)),
            )
                .prop_map(move |(stream, expected, events, retry)| {
                    (stream, expected, events, retry.filter(|_| appends > 0))
                })
        });
        let append_in = (
            prop::collection::vec(one_in, 1..4),
            prop::bool::weighted(0.7),
        )
            .prop_map(|(appends, commit)| EventOp::AppendIn { appends, commit });
        prop_oneof![
            6 => append,
            3 => append_in,
            3 => (0..STREAMS, 0..6u64, prop::sample::select(vec![1usize, 2, 3, 100]))
                .prop_map(|(stream, from, max)| EventOp::ReadStream { stream, from, max }),
            2 => (0..20usize, prop::sample::select(vec![1usize, 2, 5, 1000]))
                .prop_map(|(after, max)| EventOp::ReadAll { after, max }),
            1 => (0..STREAMS).prop_map(|stream| EventOp::StreamVersion { stream }),
            1 => (0..STREAMS, 1..6u64, 0..2u64, 0..10u8).prop_map(|(stream, version, hash, state)| {
                EventOp::SaveSnapshot { stream, version, hash, state }
            }),
            1 => (0..STREAMS).prop_map(|stream| EventOp::LoadSnapshot { stream }),
        ]
        .boxed()
    }

    fn apply(mut state: Self, op: &EventOp) -> Self {
        match op {
            EventOp::Append {
                stream,
                expected,
                events,
                retry: None,
            } => {
                state.appends += 1;
                let storable = events.iter().all(|p| !matches!(p, Payload::Unstorable(_)));
                if storable {
                    appended(&mut state.versions, *stream, *expected, events.len());
                }
            }
            EventOp::AppendIn {
                appends,
                commit: true,
            } => {
                let mut versions = state.versions;
                for (stream, expected, events, retry) in appends {
                    if retry.is_none() {
                        appended(&mut versions, *stream, *expected, events.len());
                    }
                }
                state.versions = versions;
            }
            _ => {}
        }
        state
    }
}

/// Both event stores, the case's stream names, and what the case appended.
struct EventStores {
    memory: MemoryEventStore,
    pg: PgEventStore,
    streams: Vec<StreamId>,
    /// Where this case's events begin in the PostgreSQL feed (the memory store is fresh).
    pg_start: GlobalPosition,
    /// Every append, by stream, with the events sent (for retries).
    appends: Vec<Vec<NewEvent>>,
}

/// What the contract promises of a stored event, without its feed position.
fn stored(event: &RecordedEvent) -> String {
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    format!(
        "{} v{} {} {} s{} {} {:?}",
        event.stream_id,
        event.version,
        event.event_id,
        event.event_type,
        event.schema_version,
        data,
        event.metadata
    )
}

fn stored_all(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(stored).collect()
}

/// An append's outcome without positions, which differ between backends; positions must grow.
fn append_outcome(result: &dtx::Result<AppendResult>, with_positions: bool) -> String {
    match result {
        Ok(r) => {
            if with_positions {
                assert_eq!(
                    r.positions.len() as u64,
                    r.last_version - r.first_version + 1
                );
                assert!(r.positions.windows(2).all(|w| w[0] < w[1]), "{r:?}");
            }
            format!(
                "Ok({}..={}, deduplicated: {})",
                r.first_version, r.last_version, r.deduplicated
            )
        }
        Err(error) => format!("Err({error})"),
    }
}

impl EventStores {
    /// This case's feed on PostgreSQL, once it shows as many events as the memory feed (the feed
    /// holds events back while an older transaction anywhere in the cluster runs).
    async fn pg_feed(&self, events: usize) -> Vec<RecordedEvent> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let feed = self.pg.read_all(self.pg_start, usize::MAX).await.unwrap();
            if feed.len() >= events || Instant::now() > deadline {
                return feed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn apply(&mut self, op: EventOp) {
        match op {
            EventOp::Append {
                stream,
                expected,
                events,
                retry,
            } => {
                // A shrunk sequence may have lost the append a retry resends.
                let events = if let Some(i) = retry.filter(|_| !self.appends.is_empty()) {
                    self.appends[i % self.appends.len()].clone()
                } else {
                    let events: Vec<NewEvent> = events.into_iter().map(Payload::event).collect();
                    self.appends.push(events.clone());
                    events
                };
                let s = &self.streams[stream];
                let memory = self.memory.append(s, expected, events.clone()).await;
                let pg = self.pg.append(s, expected, events).await;
                assert_eq!(
                    append_outcome(&memory, true),
                    append_outcome(&pg, true),
                    "append to {s} expecting {expected}"
                );
            }
            EventOp::AppendIn { appends, commit } => {
                let mut memory_uow = MemoryUnitOfWork::new();
                let mut pg_uow = PgUnitOfWork::begin(self.pg.pool()).await.unwrap();
                // A refused append (a conflict, a duplicate, an unstorable event) leaves the unit
                // of work usable on both backends: go on, and compare the commit.
                for (stream, expected, events, retry) in appends {
                    let events: Vec<NewEvent> = match retry.filter(|_| !self.appends.is_empty()) {
                        Some(i) => self.appends[i % self.appends.len()].clone(),
                        None => events.into_iter().map(Payload::event).collect(),
                    };
                    let s = &self.streams[stream];
                    let memory = self
                        .memory
                        .append_in(&mut memory_uow, s, expected, events.clone())
                        .await;
                    let pg = self.pg.append_in(&mut pg_uow, s, expected, events).await;
                    assert_eq!(
                        append_outcome(&memory, false),
                        append_outcome(&pg, false),
                        "append_in to {s} expecting {expected}"
                    );
                }
                if commit {
                    let memory = memory_uow.commit().await;
                    let pg = pg_uow.commit().await;
                    assert_eq!(outcome(&memory), outcome(&pg), "commit");
                } else {
                    memory_uow.rollback().await.unwrap();
                    pg_uow.rollback().await.unwrap();
                }
            }
            EventOp::ReadStream { stream, from, max } => {
                let s = &self.streams[stream];
                let memory = self.memory.read_stream(s, from, max).await.unwrap();
                let pg = self.pg.read_stream(s, from, max).await.unwrap();
                assert_eq!(stored_all(&memory), stored_all(&pg), "read {s} from {from}");
                let memory = self.memory.read_stream_data(s, from, max).await.unwrap();
                let pg = self.pg.read_stream_data(s, from, max).await.unwrap();
                // The same JSON, not the same text (jsonb normalises spacing and key order).
                let data = |events: Vec<dtx::EventData>| {
                    events
                        .into_iter()
                        .map(|e| {
                            let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                            (e.version, e.event_type, e.schema_version, data)
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(data(memory), data(pg), "read data of {s}");
            }
            EventOp::ReadAll { after, max } => {
                let memory_feed = self
                    .memory
                    .read_all(GlobalPosition::START, usize::MAX)
                    .await
                    .unwrap();
                let pg_feed = self.pg_feed(memory_feed.len()).await;
                assert_eq!(stored_all(&memory_feed), stored_all(&pg_feed), "the feed");
                let after = after.min(memory_feed.len());
                let position = |feed: &[RecordedEvent], start| {
                    after.checked_sub(1).map_or(start, |i| feed[i].position)
                };
                let memory = self
                    .memory
                    .read_all(position(&memory_feed, GlobalPosition::START), max)
                    .await
                    .unwrap();
                let pg = self
                    .pg
                    .read_all(position(&pg_feed, self.pg_start), max)
                    .await
                    .unwrap();
                assert_eq!(
                    stored_all(&memory),
                    stored_all(&pg),
                    "the feed after {after}"
                );
            }
            EventOp::StreamVersion { stream } => {
                let s = &self.streams[stream];
                let memory = self.memory.stream_version(s).await;
                let pg = self.pg.stream_version(s).await;
                assert_eq!(outcome(&memory), outcome(&pg), "version of {s}");
            }
            EventOp::SaveSnapshot {
                stream,
                version,
                hash,
                state,
            } => {
                let s = &self.streams[stream];
                let json = if state == 9 {
                    r#"{"state": "\u0000"}"#.to_owned()
                } else {
                    serde_json::json!({ "state": state }).to_string()
                };
                let snapshot = Snapshot {
                    aggregate_type: "Ledger".to_owned(),
                    version,
                    schema_hash: hash,
                    state: RawValue::from_string(json).unwrap(),
                };
                let memory = self.memory.save_snapshot(s, snapshot.clone()).await;
                let pg = self.pg.save_snapshot(s, snapshot).await;
                assert_eq!(outcome(&memory), outcome(&pg), "snapshot of {s}");
            }
            EventOp::LoadSnapshot { stream } => {
                let s = &self.streams[stream];
                let show = |snapshot: Option<Snapshot>| {
                    snapshot.map(|s| {
                        let state: serde_json::Value = serde_json::from_str(s.state.get()).unwrap();
                        (s.aggregate_type, s.version, s.schema_hash, state)
                    })
                };
                let memory = show(self.memory.load_snapshot(s).await.unwrap());
                let pg = show(self.pg.load_snapshot(s).await.unwrap());
                assert_eq!(memory, pg, "snapshot of {s}");
            }
        }
    }
}

impl StateMachineTest for EventStores {
    type SystemUnderTest = Self;
    type Reference = EventModel;

    fn init_test(_: &EventModel) -> Self {
        let case = Uuid::now_v7().simple().to_string();
        let pg = PgEventStore::new(pool());
        // A marker: every event of this case comes after it in the feed.
        let marker = StreamId::new(format!("Start-{case}")).unwrap();
        let start = block_on(pg.append(
            &marker,
            ExpectedVersion::NoStream,
            vec![Payload::Amount(0).event()],
        ))
        .unwrap();
        Self {
            memory: MemoryEventStore::new(),
            pg,
            streams: (0..STREAMS)
                .map(|s| StreamId::new(format!("Diff-{case}-{s}")).unwrap())
                .collect(),
            pg_start: start.positions[0],
            appends: Vec::new(),
        }
    }

    fn apply(mut state: Self, _: &EventModel, op: EventOp) -> Self {
        EVENT_OPS.fetch_add(1, Ordering::Relaxed);
        block_on(state.apply(op));
        state
    }
}

#[test]
fn event_store_backends_agree() {
    run::<EventStores>("event store", 500, 30, &EVENT_OPS);
}

// ---------------------------------------------------------------------------------------------
// The saga store. Each case runs at its own time, earlier than every case before it: claims
// (due sagas only) and lists (oldest first) see this case's sagas only, or before all others.

const OWNERS: [&str; 2] = ["worker-a", "worker-b"];
const STATUSES: [SagaStatus; 6] = [
    SagaStatus::Running,
    SagaStatus::Waiting,
    SagaStatus::Compensating,
    SagaStatus::Completed,
    SagaStatus::Compensated,
    SagaStatus::Failed,
];

#[derive(Debug, Clone)]
enum SagaOp {
    /// Starts a saga (`data` 9: unstorable data).
    Insert {
        data: u8,
    },
    /// Moves the clock on by `minutes`, then claims for a 5-minute lease.
    Claim {
        owner: usize,
        minutes: i64,
        limit: usize,
    },
    /// Saves a transition of saga `saga` as `owner`, `stale` versions behind.
    Save {
        saga: usize,
        owner: usize,
        status: usize,
        step: u32,
        keep_lease: bool,
        stale: bool,
    },
    Get {
        saga: usize,
    },
    /// Delivers `Paid` (what waiting sagas await) or `Shipped` (what none does); payload 9 is
    /// unstorable.
    Deliver {
        saga: usize,
        paid: bool,
        payload: u8,
    },
    List {
        status: usize,
        limit: usize,
    },
    RetryFailed {
        saga: usize,
    },
    Counts,
}

#[derive(Debug, Clone, Default)]
struct SagaModel {
    sagas: usize,
}

impl ReferenceStateMachine for SagaModel {
    type State = Self;
    type Transition = SagaOp;

    fn init_state() -> BoxedStrategy<Self> {
        Just(Self::default()).boxed()
    }

    fn transitions(state: &Self) -> BoxedStrategy<SagaOp> {
        // One past the last saga: an id no saga has.
        let saga = 0..=state.sagas;
        prop_oneof![
            3 => (0..10u8).prop_map(|data| SagaOp::Insert { data }),
            3 => (0..OWNERS.len(), 0..4i64, 1..4usize)
                .prop_map(|(owner, minutes, limit)| SagaOp::Claim { owner, minutes, limit }),
            4 => (saga.clone(), 0..OWNERS.len(), 0..STATUSES.len(), 0..3u32, any::<bool>(),
                  prop::bool::weighted(0.2))
                .prop_map(|(saga, owner, status, step, keep_lease, stale)| SagaOp::Save {
                    saga, owner, status, step, keep_lease, stale,
                }),
            2 => saga.clone().prop_map(|saga| SagaOp::Get { saga }),
            2 => (saga.clone(), any::<bool>(), 0..10u8)
                .prop_map(|(saga, paid, payload)| SagaOp::Deliver { saga, paid, payload }),
            1 => (0..STATUSES.len(), 1..4usize).prop_map(|(status, limit)| SagaOp::List { status, limit }),
            1 => saga.prop_map(|saga| SagaOp::RetryFailed { saga }),
            1 => Just(SagaOp::Counts),
        ]
        .boxed()
    }

    fn apply(mut state: Self, op: &SagaOp) -> Self {
        if matches!(op, SagaOp::Insert { data } if *data != 9) {
            state.sagas += 1;
        }
        state
    }
}

struct SagaStores {
    memory: MemorySagaStore,
    pg: PgSagaStore,
    now: DateTime<Utc>,
    ids: Vec<Uuid>,
    /// The PostgreSQL counts before this case.
    pg_baseline: std::collections::HashMap<SagaStatus, u64>,
}

static SAGA_CASES: AtomicU64 = AtomicU64::new(0);

impl SagaStores {
    fn id(&self, saga: usize) -> Uuid {
        self.ids.get(saga).copied().unwrap_or(Uuid::nil())
    }

    async fn apply(&mut self, op: SagaOp) {
        match op {
            SagaOp::Insert { data } => {
                // Distinct creation times keep "oldest first" a total order.
                self.now += Minutes::seconds(1);
                let data = if data == 9 {
                    serde_json::json!({ "note": "nul \u{0}" })
                } else {
                    serde_json::json!({ "n": data, "text": TEXTS[usize::from(data) % TEXTS.len()] })
                };
                let record = SagaRecord::new("DiffSaga", data, self.now, None, None);
                let memory = self.memory.insert(&record).await;
                let pg = self.pg.insert(&record).await;
                assert_eq!(outcome(&memory), outcome(&pg), "insert");
                if memory.is_ok() {
                    self.ids.push(record.id);
                }
            }
            SagaOp::Claim {
                owner,
                minutes,
                limit,
            } => {
                self.now += Minutes::minutes(minutes);
                let lease = Duration::from_mins(5);
                let memory = self
                    .memory
                    .claim(OWNERS[owner], self.now, lease, limit)
                    .await;
                let pg = self.pg.claim(OWNERS[owner], self.now, lease, limit).await;
                let sorted = |claimed: dtx::Result<Vec<SagaRecord>>| {
                    claimed.map(|mut sagas| {
                        sagas.sort_by_key(|s| s.id);
                        sagas
                    })
                };
                assert_eq!(outcome(&sorted(memory)), outcome(&sorted(pg)), "claim");
            }
            SagaOp::Save {
                saga,
                owner,
                status,
                step,
                keep_lease,
                stale,
            } => {
                let Some(mut record) = self.memory.get(self.id(saga)).await.unwrap() else {
                    return;
                };
                record.status = STATUSES[status];
                record.awaiting = (record.status == SagaStatus::Waiting).then(|| "Paid".to_owned());
                record.step = step;
                // Claims take the earliest due first; ties are in no promised order, so each
                // saga's times get a millisecond of their own.
                record.next_run_at = self.now
                    + Minutes::minutes(i64::from(step))
                    + Minutes::milliseconds(i64::try_from(saga).unwrap() + 1);
                record.updated_at = self.now;
                record.version += u64::from(!stale);
                let lease = keep_lease.then(|| self.now + Minutes::minutes(5));
                let memory = self.memory.save(&record, OWNERS[owner], lease).await;
                let pg = self.pg.save(&record, OWNERS[owner], lease).await;
                assert_eq!(outcome(&memory), outcome(&pg), "save {record:?}");
            }
            SagaOp::Get { saga } => {
                let memory = self.memory.get(self.id(saga)).await;
                let pg = self.pg.get(self.id(saga)).await;
                assert_eq!(outcome(&memory), outcome(&pg), "get");
            }
            SagaOp::Deliver {
                saga,
                paid,
                payload,
            } => {
                self.now += Minutes::seconds(1);
                let payload = if payload == 9 {
                    serde_json::json!({ "nul": "\u{0}" })
                } else {
                    serde_json::json!({ "reference": payload })
                };
                let event = SagaEvent {
                    event_type: if paid { "Paid" } else { "Shipped" }.to_owned(),
                    payload,
                };
                let id = self.id(saga);
                let memory = self.memory.deliver(id, &event, self.now).await;
                let pg = self.pg.deliver(id, &event, self.now).await;
                assert_eq!(outcome(&memory), outcome(&pg), "deliver {event:?}");
            }
            SagaOp::List { status, limit } => {
                // This case's sagas are the oldest; the sagas of other cases that fill a short
                // list up on PostgreSQL are left out.
                let mine = |listed: dtx::Result<Vec<SagaRecord>>| {
                    listed.map(|sagas| {
                        sagas
                            .into_iter()
                            .filter(|s| self.ids.contains(&s.id))
                            .collect::<Vec<_>>()
                    })
                };
                let memory = mine(self.memory.list(STATUSES[status], limit).await);
                let pg = mine(self.pg.list(STATUSES[status], limit).await);
                assert_eq!(outcome(&memory), outcome(&pg), "list {}", STATUSES[status]);
            }
            SagaOp::RetryFailed { saga } => {
                let memory = self.memory.retry_failed(self.id(saga), self.now).await;
                let pg = self.pg.retry_failed(self.id(saga), self.now).await;
                assert_eq!(outcome(&memory), outcome(&pg), "retry_failed");
            }
            SagaOp::Counts => {
                let memory = self.memory.counts().await.unwrap();
                let pg = self.pg.counts().await.unwrap();
                for status in STATUSES {
                    let mine = pg.get(&status).copied().unwrap_or(0)
                        - self.pg_baseline.get(&status).copied().unwrap_or(0);
                    assert_eq!(
                        memory.get(&status).copied().unwrap_or(0),
                        mine,
                        "count of {status}"
                    );
                }
            }
        }
    }
}

impl StateMachineTest for SagaStores {
    type SystemUnderTest = Self;
    type Reference = SagaModel;

    fn init_test(_: &SagaModel) -> Self {
        let case = i64::try_from(SAGA_CASES.fetch_add(1, Ordering::Relaxed)).unwrap();
        let pg = PgSagaStore::new(pool());
        let pg_baseline = block_on(pg.counts()).unwrap();
        Self {
            memory: MemorySagaStore::new(),
            pg,
            now: Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap() - Minutes::days(30 * case),
            ids: Vec::new(),
            pg_baseline,
        }
    }

    fn apply(mut state: Self, _: &SagaModel, op: SagaOp) -> Self {
        SAGA_OPS.fetch_add(1, Ordering::Relaxed);
        block_on(state.apply(op));
        state
    }
}

#[test]
fn saga_store_backends_agree() {
    run::<SagaStores>("saga store", 500, 30, &SAGA_OPS);
}

// ---------------------------------------------------------------------------------------------
// The idempotency store, with timeouts far longer than a case: no lock times out, no record
// expires while a case runs.

const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum IdempotencyOp {
    Claim {
        key: usize,
        fingerprint: u8,
    },
    /// Completes the `lease`-th lease taken (an old one may have been used already); `size`
    /// 255 is above the store's limit.
    Complete {
        lease: usize,
        size: u8,
    },
    Release {
        lease: usize,
    },
    Load {
        key: usize,
    },
}

#[derive(Debug, Clone, Default)]
struct IdempotencyModel {
    leases: usize,
}

impl ReferenceStateMachine for IdempotencyModel {
    type State = Self;
    type Transition = IdempotencyOp;

    fn init_state() -> BoxedStrategy<Self> {
        Just(Self::default()).boxed()
    }

    fn transitions(state: &Self) -> BoxedStrategy<IdempotencyOp> {
        let lease = 0..state.leases.max(1);
        prop_oneof![
            4 => (0..KEYS, 0..2u8).prop_map(|(key, fingerprint)| IdempotencyOp::Claim { key, fingerprint }),
            3 => (lease.clone(), prop_oneof![9 => 0..8u8, 1 => Just(255u8)])
                .prop_map(|(lease, size)| IdempotencyOp::Complete { lease, size }),
            2 => lease.prop_map(|lease| IdempotencyOp::Release { lease }),
            2 => (0..KEYS).prop_map(|key| IdempotencyOp::Load { key }),
        ]
        .boxed()
    }

    fn apply(mut state: Self, op: &IdempotencyOp) -> Self {
        // Every claim may take a lease; those that did not are skipped by the test.
        if matches!(op, IdempotencyOp::Claim { .. }) {
            state.leases += 1;
        }
        state
    }
}

struct IdempotencyStores {
    memory: MemoryIdempotencyStore,
    pg: PgIdempotencyStore,
    scope: Scope,
    /// The lease of each claim, on each backend (`None` when it took none).
    leases: Vec<Option<(Lease, Lease)>>,
}

/// A claim's kind and data; when an in-flight lock ends depends on each backend's clock.
fn claim_outcome(claim: &Result<Claim, dtx::idempotency::IdempotencyError>) -> String {
    match claim {
        Ok(Claim::Claimed(lease)) => format!("Claimed({})", lease.digest()),
        Ok(Claim::InFlight { .. }) => "InFlight".to_owned(),
        Ok(other) => format!("{other:?}"),
        Err(error) => format!("Err({error})"),
    }
}

impl IdempotencyStores {
    fn key(key: usize) -> IdempotencyKey {
        IdempotencyKey::new(format!("key-{key}")).unwrap()
    }

    fn lease(&self, lease: usize) -> Option<&(Lease, Lease)> {
        self.leases.get(lease).and_then(Option::as_ref)
    }

    async fn apply(&mut self, op: IdempotencyOp) {
        match op {
            IdempotencyOp::Claim { key, fingerprint } => {
                let policy = IdempotencyPolicy::default()
                    .with_ttl(Duration::from_hours(1))
                    .with_lock_timeout(Duration::from_hours(1));
                let request = ClaimRequest::new(
                    self.scope.clone(),
                    Self::key(key),
                    Fingerprint::of(&[fingerprint]),
                )
                .with_policy(policy);
                let memory = self.memory.claim(&request).await;
                let pg = self.pg.claim(&request).await;
                assert_eq!(
                    claim_outcome(&memory),
                    claim_outcome(&pg),
                    "claim {request:?}"
                );
                self.leases.push(match (memory, pg) {
                    (Ok(Claim::Claimed(m)), Ok(Claim::Claimed(p))) => Some((m, p)),
                    _ => None,
                });
            }
            IdempotencyOp::Complete { lease, size } => {
                let Some((m, p)) = self.lease(lease) else {
                    return;
                };
                let response = if size == 255 {
                    vec![7u8; DEFAULT_MAX_RESPONSE_BYTES + 1]
                } else {
                    (0..size).collect()
                };
                let memory = self.memory.complete(m, &response).await;
                let pg = self.pg.complete(p, &response).await;
                assert_eq!(outcome(&memory), outcome(&pg), "complete {m:?}");
            }
            IdempotencyOp::Release { lease } => {
                let Some((m, p)) = self.lease(lease) else {
                    return;
                };
                let memory = self.memory.release(m).await;
                let pg = self.pg.release(p).await;
                assert_eq!(outcome(&memory), outcome(&pg), "release {m:?}");
            }
            IdempotencyOp::Load { key } => {
                let show = |record: Option<dtx::idempotency::IdempotencyRecord>| {
                    record.map(|r| {
                        (
                            r.status,
                            r.fingerprint,
                            r.response,
                            r.locked_until.is_some(),
                            r.completed_at.is_some(),
                        )
                    })
                };
                let memory = self.memory.load(&self.scope, &Self::key(key)).await;
                let pg = self.pg.load(&self.scope, &Self::key(key)).await;
                assert_eq!(
                    outcome(&memory.map(show)),
                    outcome(&pg.map(show)),
                    "load key-{key}"
                );
            }
        }
    }
}

impl StateMachineTest for IdempotencyStores {
    type SystemUnderTest = Self;
    type Reference = IdempotencyModel;

    fn init_test(_: &IdempotencyModel) -> Self {
        Self {
            memory: MemoryIdempotencyStore::new(),
            pg: PgIdempotencyStore::new(pool()),
            scope: Scope::new(format!("diff-{}", Uuid::now_v7().simple())).unwrap(),
            leases: Vec::new(),
        }
    }

    fn apply(mut state: Self, _: &IdempotencyModel, op: IdempotencyOp) -> Self {
        IDEMPOTENCY_OPS.fetch_add(1, Ordering::Relaxed);
        block_on(state.apply(op));
        state
    }
}

#[test]
fn idempotency_store_backends_agree() {
    run::<IdempotencyStores>("idempotency store", 500, 30, &IDEMPOTENCY_OPS);
}

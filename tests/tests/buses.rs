//! The command and query buses on both backends: registry, aggregate command path with
//! retries, validation, metadata, caching.

#![allow(
    clippy::unused_async,
    clippy::unnecessary_wraps,
    clippy::unused_self,
    clippy::needless_pass_by_value,
    clippy::items_after_statements,
    clippy::case_sensitive_file_extension_comparisons,
    reason = "handlers in tests take the shapes the macros require"
)]
#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

// The order handlers live in another crate (`examples`); naming it links them (the link rule).
use examples::order::{
    AddLine, ConfirmOrder, GetOrderSummary, Line, Order, OrderError, OrderId, OrderSummary,
    PlaceOrder, Status,
};
use examples::order_summaries::OrderSummaries;

use dtx::cqrs::{
    BusError, CommandBus, CommandContext, CommandError, CommandMetadata, Committed, QueryBus,
    QueryError, QueryOptions, RetryPolicy, State,
};
use dtx::{Aggregate, Apply, DomainEvent, Id, SharedEventStore, command_handler, query_handler};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

// --- a counter aggregate defined here, for the concurrency tests -----------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Started {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Incremented {
    tag: u32,
}

#[derive(Debug, Clone, DomainEvent)]
enum CounterEvent {
    Started(Started),
    Incremented(Incremented),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = CounterEvent, snapshot_every = 7)]
struct Counter {
    id: Id<Counter>,
    count: u32,
}

impl Apply<Started> for Counter {
    fn apply(&mut self, _: &Started) {}
}

impl Apply<Incremented> for Counter {
    fn apply(&mut self, _: &Incremented) {
        self.count += 1;
    }
}

#[derive(Debug, Clone)]
struct StartCounter {
    counter: Id<Counter>,
}

#[derive(Debug, Clone)]
struct Increment {
    counter_id: Id<Counter>,
    tag: u32,
}

/// Starts the counter if it has no events, and increments it either way.
#[derive(Debug, Clone)]
struct Tick {
    counter_id: Id<Counter>,
    tag: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[command_handler]
impl Counter {
    fn tick(counter: Option<&Self>, cmd: &Tick) -> Result<Vec<CounterEvent>, Never> {
        let mut events = Vec::new();
        if counter.is_none() {
            events.push(Started {}.into());
        }
        events.push(Incremented { tag: cmd.tag }.into());
        Ok(events)
    }

    #[command(target = counter)]
    fn start(_cmd: &StartCounter) -> Result<Started, Never> {
        Ok(Started {})
    }

    fn increment(&self, cmd: Increment) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![Incremented { tag: cmd.tag }.into()])
    }
}

// --- a free handler and a cached query with shared state --------------------------------------

/// Counts how often the query handler really ran.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<AtomicUsize>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Square(u64);

#[query_handler(cache(ttl_ms = 400, capacity = 100))]
async fn square(query: Square, State(calls): State<Calls>) -> Result<u64, Never> {
    calls.0.fetch_add(1, Ordering::SeqCst);
    Ok(query.0 * query.0)
}

struct Describe;

#[command_handler]
async fn describe(_cmd: Describe, ctx: &CommandContext) -> Result<(uuid::Uuid, uuid::Uuid), Never> {
    Ok((ctx.metadata().command_id, ctx.metadata().correlation_id))
}

fn commands(store: SharedEventStore) -> CommandBus {
    CommandBus::builder()
        .store(store)
        .registry()
        .build()
        .unwrap()
}

fn line(sku: &str, quantity: u32) -> Line {
    Line {
        sku: sku.to_owned(),
        quantity,
        unit_price_cents: 100,
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        /// The in-memory store, each call yielding to the scheduler as I/O would.
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(::std::sync::Arc::new(tests::Yielding(dtx::MemoryEventStore::new()))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(::std::sync::Arc::new(tests::pg_store().await)).await;
                }
            )*
        }
    };
}

on_both_backends!(
    handlers_from_another_crate_are_found,
    fifty_concurrent_commands_all_succeed_once,
    conflicts_beyond_the_retry_budget_are_typed,
    validation_failure_stores_nothing,
    events_carry_correlation_and_causation,
    domain_errors_and_missing_aggregates_are_typed,
    two_buses_on_one_store_stay_correct_through_their_state_caches,
    create_or_update_handlers_race_without_already_exists,
);

/// Twenty concurrent `Option<&Self>` commands on an aggregate that does not exist yet: exactly
/// one creates it (decides with `None`), the others lose the version race, reload and decide
/// with its state; none gets `AlreadyExists`, none is lost. Inside a unit of work the same
/// handler sees the state written earlier in it.
async fn create_or_update_handlers_race_without_already_exists(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    let counter = Id::<Counter>::new();
    let tasks: Vec<_> = (0..20)
        .map(|tag| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.execute(Tick {
                    counter_id: counter,
                    tag,
                })
                .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let committed = task.await.unwrap().unwrap();
        created += usize::from(committed.events == 2);
    }
    assert_eq!(created, 1, "one command created the counter");
    let stream = Counter::stream_id(&counter).unwrap();
    let stored = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 21);
    let starts = stored
        .iter()
        .filter(|e| {
            matches!(
                e.decode::<CounterEvent>().unwrap(),
                CounterEvent::Started(_)
            )
        })
        .count();
    assert_eq!(starts, 1);
    let loaded = dtx::Repository::<Counter>::shared(Arc::clone(&store), &dtx::DtxConfig::default())
        .load(&counter)
        .await
        .unwrap();
    assert_eq!(loaded.state().count, 20);
}

/// Two service instances (two buses, each with its own state cache) alternate commands on one
/// aggregate: each instance's cached state is stale every time, the append conflicts, the
/// retry reloads, and every command lands exactly once.
async fn two_buses_on_one_store_stay_correct_through_their_state_caches(store: SharedEventStore) {
    let a = commands(Arc::clone(&store));
    let b = commands(Arc::clone(&store));
    let counter = Id::<Counter>::new();
    let _: Committed = a.execute(StartCounter { counter }).await.unwrap();
    let mut retried = 0;
    for tag in 0..10 {
        let bus = if tag % 2 == 0 { &b } else { &a };
        let done: Committed = bus
            .execute(Increment {
                counter_id: counter,
                tag,
            })
            .await
            .unwrap();
        assert_eq!(done.version, u64::from(tag) + 2);
        retried += done.attempts - 1;
    }
    assert!(
        retried >= 8,
        "every stale cache must have been caught by a conflict, got {retried}"
    );
    let uncached = CommandBus::builder()
        .store(Arc::clone(&store))
        .cache_states(0)
        .registry()
        .build()
        .unwrap();
    let done: Committed = uncached
        .execute(Increment {
            counter_id: counter,
            tag: 99,
        })
        .await
        .unwrap();
    assert_eq!((done.version, done.attempts), (12, 1));
}

/// A handler declared in the `examples` crate is found through the registry and runs the whole
/// aggregate path.
async fn handlers_from_another_crate_are_found(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    assert!(
        bus.handles::<PlaceOrder>() && bus.handles::<AddLine>() && bus.handles::<ConfirmOrder>()
    );
    let order_id = OrderId::new();
    let placed: Committed = bus
        .execute(PlaceOrder {
            order_id,
            customer: "c-1".into(),
        })
        .await
        .unwrap();
    assert_eq!((placed.version, placed.events, placed.attempts), (1, 1, 1));
    assert_eq!(placed.stream, Order::stream_id(&order_id).unwrap());
    let _: Committed = bus
        .execute(AddLine {
            order_id,
            line: line("a", 2),
        })
        .await
        .unwrap();
    let confirmed: Committed = bus.execute(ConfirmOrder { order_id }).await.unwrap();
    assert_eq!(confirmed.version, 3);

    let queries = QueryBus::builder()
        .state(Arc::clone(&store))
        .state(Calls::default())
        .state(OrderSummaries::in_memory())
        .registry()
        .build()
        .unwrap();
    let summary: OrderSummary = queries.execute(GetOrderSummary { order_id }).await.unwrap();
    assert_eq!(
        (
            summary.status,
            summary.lines,
            summary.total_cents,
            summary.version
        ),
        (Status::Confirmed, 1, 200, 3)
    );
}

/// 50 commands race for one aggregate: every one succeeds through retries, every event is
/// stored exactly once, versions are contiguous.
async fn fifty_concurrent_commands_all_succeed_once(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    let counter = Id::<Counter>::new();
    let _: Committed = bus.execute(StartCounter { counter }).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|tag| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.execute(Increment {
                    counter_id: counter,
                    tag,
                })
                .await
            })
        })
        .collect();
    let mut retried = 0;
    let mut versions = HashSet::new();
    for task in tasks {
        let committed = task.await.unwrap().unwrap();
        assert_eq!(committed.events, 1);
        retried += committed.attempts - 1;
        assert!(
            versions.insert(committed.version),
            "two commands got version {}",
            committed.version
        );
    }
    assert!(retried > 0, "the commands must actually race");
    assert_eq!(versions, (2..=51).collect::<HashSet<u64>>());

    let stream = Counter::stream_id(&counter).unwrap();
    let stored = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 51);
    let tags: HashSet<u32> = stored[1..]
        .iter()
        .map(|e| match e.decode::<CounterEvent>().unwrap() {
            CounterEvent::Incremented(i) => i.tag,
            CounterEvent::Started(_) => panic!("started twice"),
        })
        .collect();
    assert_eq!(
        tags,
        (0..50).collect::<HashSet<u32>>(),
        "each command's event exactly once"
    );
}

/// Without retries, losers get a typed conflict and store nothing.
async fn conflicts_beyond_the_retry_budget_are_typed(store: SharedEventStore) {
    let bus = CommandBus::builder()
        .store(Arc::clone(&store))
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .registry()
        .build()
        .unwrap();
    let counter = Id::<Counter>::new();
    let _: Committed = bus.execute(StartCounter { counter }).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|tag| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.execute(Increment {
                    counter_id: counter,
                    tag,
                })
                .await
            })
        })
        .collect();
    let (mut ok, mut conflicts) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CommandError::Conflict {
                attempts: 1,
                source: dtx::Error::Conflict { .. },
                ..
            }) => conflicts += 1,
            Err(other) => panic!("expected success or a typed conflict, got {other}"),
        }
    }
    assert_eq!(ok + conflicts, 20);
    let version = store
        .stream_version(&Counter::stream_id(&counter).unwrap())
        .await
        .unwrap();
    assert_eq!(version, 1 + ok, "only the winners stored events");
}

/// A command that breaks its rules is refused with every broken rule, and nothing is stored.
async fn validation_failure_stores_nothing(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    let order_id = OrderId::new();
    let _: Committed = bus
        .execute(PlaceOrder {
            order_id,
            customer: "c".into(),
        })
        .await
        .unwrap();
    let bad = AddLine {
        order_id,
        line: Line {
            sku: String::new(),
            quantity: 0,
            unit_price_cents: 0,
        },
    };
    match bus.execute(bad).await {
        Err(CommandError::Invalid { command, errors }) => {
            assert!(command.ends_with("AddLine"));
            let fields: Vec<&str> = errors.violations().iter().map(|v| v.field).collect();
            assert_eq!(
                fields,
                ["line.sku", "line.quantity", "line.unit_price_cents"]
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        store
            .stream_version(&Order::stream_id(&order_id).unwrap())
            .await
            .unwrap(),
        1
    );
}

/// Every event carries the caller's correlation id and its command's id as causation id.
async fn events_carry_correlation_and_causation(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    let order_id = OrderId::new();
    let correlation = uuid::Uuid::now_v7();
    let place = CommandMetadata::correlated(correlation)
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let add = CommandMetadata::correlated(correlation).caused_by(place.command_id);
    let _: Committed = bus
        .execute_with(
            PlaceOrder {
                order_id,
                customer: "c".into(),
            },
            place.clone(),
        )
        .await
        .unwrap();
    let _: Committed = bus
        .execute_with(
            AddLine {
                order_id,
                line: line("x", 1),
            },
            add.clone(),
        )
        .await
        .unwrap();
    let events = store
        .read_stream(&Order::stream_id(&order_id).unwrap(), 1, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.metadata.correlation_id == Some(correlation))
    );
    assert_eq!(events[0].metadata.causation_id, Some(place.command_id));
    assert_eq!(events[0].metadata.traceparent, place.traceparent);
    assert_eq!(events[1].metadata.causation_id, Some(add.command_id));

    // Without caller metadata the command starts its own correlation.
    let (command_id, correlation_id): (uuid::Uuid, uuid::Uuid) =
        bus.execute(Describe).await.unwrap();
    assert_eq!(command_id, correlation_id);
}

/// Domain errors, missing and existing aggregates, unhandled commands and wrong output types
/// are typed errors.
async fn domain_errors_and_missing_aggregates_are_typed(store: SharedEventStore) {
    let bus = commands(Arc::clone(&store));
    let order_id = OrderId::new();
    let missing = bus.execute(ConfirmOrder { order_id }).await.unwrap_err();
    assert!(
        matches!(&missing, CommandError::NotFound { aggregate: "Order", id } if *id == order_id.to_string()),
        "{missing:?}"
    );

    let _: Committed = bus
        .execute(PlaceOrder {
            order_id,
            customer: "c".into(),
        })
        .await
        .unwrap();
    let again = bus
        .execute(PlaceOrder {
            order_id,
            customer: "c".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            CommandError::AlreadyExists {
                aggregate: "Order",
                ..
            }
        ),
        "{again:?}"
    );

    let empty = bus.execute(ConfirmOrder { order_id }).await.unwrap_err();
    assert_eq!(empty.domain::<OrderError>(), Some(&OrderError::NoLines));

    let _: Committed = bus
        .execute(AddLine {
            order_id,
            line: line("x", 1),
        })
        .await
        .unwrap();
    // The output type is checked at compile time: `ConfirmOrder`'s handler returns `Committed`
    // (a `String` here does not compile; see the trybuild case `wrong_output_type`).
    let confirmed: Committed = bus.execute(ConfirmOrder { order_id }).await.unwrap();
    assert_eq!(confirmed.events, 1);

    struct Unhandled;
    impl dtx::cqrs::Command for Unhandled {
        type Output = ();
    }
    assert!(matches!(
        bus.execute(Unhandled).await,
        Err(CommandError::NoHandler { .. })
    ));
    assert_eq!(
        store
            .stream_version(&Order::stream_id(&order_id).unwrap())
            .await
            .unwrap(),
        3
    );
}

/// A required handler that is missing fails the bus at start-up; so does missing state.
#[test]
fn missing_handlers_and_state_fail_at_start_up() {
    struct Unhandled;
    match CommandBus::builder()
        .registry()
        .require::<PlaceOrder>()
        .require::<Unhandled>()
        .build()
    {
        Err(BusError::MissingHandler { message }) => assert!(message.ends_with("Unhandled")),
        other => panic!("expected MissingHandler, got {other:?}"),
    }
    match QueryBus::builder().registry().build() {
        Err(BusError::MissingState { handler, state }) => {
            assert!(
                state.ends_with("Calls")
                    || state.contains("EventStore")
                    || state.ends_with("OrderSummaries"),
                "{state}"
            );
            assert!(handler.file.ends_with(".rs") && handler.line > 0);
        }
        other => panic!("expected MissingState, got {other:?}"),
    }
}

/// A cached query runs its handler once until the TTL passes or the cache is invalidated.
#[tokio::test]
async fn cached_queries_run_once_until_ttl_or_invalidation() {
    let calls = Calls::default();
    let bus = QueryBus::builder()
        .state(calls.clone())
        .state::<SharedEventStore>(Arc::new(dtx::MemoryEventStore::new()))
        .state(OrderSummaries::in_memory())
        .registry()
        .build()
        .unwrap();
    let ran = || calls.0.load(Ordering::SeqCst);

    for _ in 0..5 {
        let n: u64 = bus.execute(Square(7)).await.unwrap();
        assert_eq!(n, 49);
    }
    assert_eq!(ran(), 1, "served from the cache");
    let other: u64 = bus.execute(Square(8)).await.unwrap();
    assert_eq!((other, ran()), (64, 2), "the key is the query value");

    let fresh: u64 = bus
        .execute_with(Square(7), QueryOptions { cache: false })
        .await
        .unwrap();
    assert_eq!((fresh, ran()), (49, 3), "uncached runs the handler");
    let _: u64 = bus.execute(Square(7)).await.unwrap();
    assert_eq!(ran(), 3, "and leaves the cache alone");

    bus.invalidate(&Square(7));
    let _: u64 = bus.execute(Square(7)).await.unwrap();
    let _: u64 = bus.execute(Square(8)).await.unwrap();
    assert_eq!(ran(), 4, "invalidation by key drops only that key");

    bus.invalidate_all::<Square>();
    let _: u64 = bus.execute(Square(7)).await.unwrap();
    let _: u64 = bus.execute(Square(8)).await.unwrap();
    assert_eq!(ran(), 6, "invalidation by handler drops every key");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: u64 = bus.execute(Square(7)).await.unwrap();
    assert_eq!(ran(), 7, "an expired entry runs the handler again");

    // A query this bus has no handler for (the output type is checked at compile time).
    struct Unhandled;
    impl dtx::cqrs::Query for Unhandled {
        type Output = u64;
    }
    assert!(matches!(
        bus.execute(Unhandled).await,
        Err(QueryError::NoHandler { .. })
    ));
}

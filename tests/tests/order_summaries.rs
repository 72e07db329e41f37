//! The `examples` crate's order-summary read model on both backends: the projection folds the
//! order's events into what the aggregate says, and its invalidations make the cached
//! `GetOrderSummaryView` answer fresh after each batch (a runner that does not invalidate
//! leaves the cached answer stale, so the test would see a missing invalidation).

#![allow(clippy::unwrap_used, reason = "tests")]

// Naming the `examples` crate links its handlers and projection (the link rule).
use dtx::cqrs::{CommandBus, Committed, QueryBus, QueryOptions};
use dtx::projection::{MemoryCheckpointStore, ProjectionRunner, SharedCheckpointStore};
use dtx::{MemoryEventStore, SharedEventStore};
use dtx_postgres::PgCheckpointStore;
use examples::order::{
    AddLine, CancelOrder, ConfirmOrder, GetOrderSummary, Line, OrderId, OrderSummary, PlaceOrder,
    Status,
};
use examples::order_summaries::{GetOrderSummaryView, OrderSummaries};
use std::sync::Arc;

#[tokio::test]
async fn in_memory() {
    the_read_model_follows_the_aggregate_and_invalidates_its_cached_query(
        Arc::new(MemoryEventStore::new()),
        Arc::new(MemoryCheckpointStore::new()),
        OrderSummaries::in_memory(),
    )
    .await;
}

#[tokio::test]
async fn on_postgres() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    the_read_model_follows_the_aggregate_and_invalidates_its_cached_query(
        Arc::new(store),
        Arc::new(PgCheckpointStore::new(pool.clone())),
        OrderSummaries::postgres(pool).await.unwrap(),
    )
    .await;
}

/// Runs `runner` until it applied `expected` events (the feed holds events back while an older
/// transaction anywhere in the cluster runs, another test's say), at most for a minute.
async fn applied(runner: &ProjectionRunner, expected: usize) -> usize {
    let started = std::time::Instant::now();
    let mut applied = 0;
    while applied < expected && started.elapsed() < std::time::Duration::from_mins(1) {
        applied += runner.run_once().await.unwrap();
        if applied < expected {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    applied
}

async fn the_read_model_follows_the_aggregate_and_invalidates_its_cached_query(
    store: SharedEventStore,
    checkpoints: SharedCheckpointStore,
    summaries: OrderSummaries,
) {
    let commands = CommandBus::builder()
        .store(Arc::clone(&store))
        .registry()
        .build()
        .unwrap();
    let queries = QueryBus::builder()
        .state(Arc::clone(&store))
        .state(summaries.clone())
        .registry()
        .build()
        .unwrap();
    // One runner (one lease owner), applied with and without the bus's invalidations.
    let silent = ProjectionRunner::new(store, checkpoints).projection(summaries);
    let invalidating = silent.clone().invalidating(queries.clone());
    let order_id = OrderId::new();
    let view = |options| queries.execute_with(GetOrderSummaryView { order_id }, options);
    let cached = || view(QueryOptions::default());
    let fresh = || view(QueryOptions::uncached());
    let add = |sku: &str, quantity, unit_price_cents| AddLine {
        order_id,
        line: Line {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        },
    };

    let _: Committed = commands
        .execute(PlaceOrder {
            order_id,
            customer: "C-7".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        cached().await.unwrap(),
        None,
        "not projected yet, and cached"
    );
    assert_eq!(applied(&invalidating, 1).await, 1);
    let placed = cached().await.unwrap().unwrap();
    assert_eq!(
        (placed.customer.as_str(), placed.status, placed.lines),
        ("C-7", Status::Open, 0),
        "the projection dropped the cached `None`"
    );

    // Without invalidations the cached answer stays stale (the TTL is 5 s) ...
    let _: Committed = commands.execute(add("SKU-1", 2, 300)).await.unwrap();
    assert_eq!(applied(&silent, 1).await, 1);
    assert_eq!(
        fresh().await.unwrap().unwrap().lines,
        1,
        "the read model moved"
    );
    assert_eq!(
        cached().await.unwrap(),
        Some(placed),
        "stale without invalidation"
    );

    // ... and with them it is fresh after every batch.
    let _: Committed = commands.execute(add("SKU-2", 1, 1_250)).await.unwrap();
    let _: Committed = commands.execute(ConfirmOrder { order_id }).await.unwrap();
    assert_eq!(applied(&invalidating, 2).await, 2);
    let confirmed: OrderSummary = cached().await.unwrap().unwrap();
    // The aggregate's summary, uncached: nothing invalidates `GetOrderSummary`.
    let aggregate = || queries.execute_with(GetOrderSummary { order_id }, QueryOptions::uncached());
    let order: OrderSummary = aggregate().await.unwrap();
    assert_eq!(
        confirmed, order,
        "the read model says what the aggregate says"
    );
    assert_eq!(
        (
            confirmed.status,
            confirmed.lines,
            confirmed.total_cents,
            confirmed.version
        ),
        (Status::Confirmed, 2, 1_850, 4)
    );

    let _: Committed = commands
        .execute(CancelOrder {
            order_id,
            reason: "changed my mind".into(),
        })
        .await
        .unwrap();
    assert_eq!(applied(&invalidating, 1).await, 1);
    let cancelled = cached().await.unwrap().unwrap();
    assert_eq!(
        (cancelled.status, cancelled.version),
        (Status::Cancelled, 5)
    );
    assert_eq!(cancelled, aggregate().await.unwrap());
}

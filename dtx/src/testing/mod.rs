//! The event-store contract suite (feature `testing`): every backend must pass it.
//!
//! Each function takes a fresh store and panics with a description of the broken promise.
//! [`event_store_contract_tests!`](crate::event_store_contract_tests) turns the whole suite into
//! `#[tokio::test]` functions for one backend:
//!
//! ```ignore
//! dtx::event_store_contract_tests!(dtx::MemoryEventStore::new());
//! ```

#![allow(clippy::missing_panics_doc, reason = "test assertions panic by design")]
#![allow(clippy::unwrap_used, reason = "test code")]

use crate::{NewEvent, StreamId};
use uuid::Uuid;

mod aggregates;
mod appends;
mod concurrency;
pub mod idempotency;
mod ledger;
mod lifecycle;
mod units_of_work;

pub use aggregates::{
    corrupted_snapshot_falls_back, decode_errors_name_stream_and_version,
    invariant_violation_stores_nothing, snapshot_replay_equals_full_replay, snapshots_keep_newest,
};
pub use appends::{
    append_and_read, batch_limits, expected_version_rules, idempotent_retry,
    large_batch_one_append, unstorable_payloads_are_refused,
};
pub use concurrency::{concurrent_any_writers, concurrent_exact_writers, global_feed_order};
pub use ledger::{Credited, Debited, Ledger, LedgerEvent};
pub use lifecycle::{
    archived_streams_load_on_request_and_stay_in_the_feed, closed_streams_refuse_appends,
    closed_streams_refuse_appends_in_units_of_work,
};
pub use units_of_work::{
    BeginUnitOfWork, append_in_resends_committed_events,
    append_in_resends_events_of_the_same_unit_of_work,
};

/// Generates one `#[tokio::test]` per contract case; `$store` is an expression (it may
/// `.await`) evaluated once per test that yields a fresh `impl EventStore`.
#[macro_export]
macro_rules! event_store_contract_tests {
    ($store:expr) => {
        $crate::event_store_contract_tests!(@cases $store;
            append_and_read, expected_version_rules, concurrent_exact_writers,
            concurrent_any_writers, idempotent_retry, batch_limits, global_feed_order,
            decode_errors_name_stream_and_version, snapshots_keep_newest,
            snapshot_replay_equals_full_replay, corrupted_snapshot_falls_back,
            invariant_violation_stores_nothing, large_batch_one_append,
            unstorable_payloads_are_refused, closed_streams_refuse_appends,
            archived_streams_load_on_request_and_stay_in_the_feed);
    };
    (@cases $store:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store: $crate::SharedEventStore = ::std::sync::Arc::new($store);
                $crate::testing::$case(store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per unit-of-work contract case; `$setup` is an expression (it
/// may `.await`) evaluated once per test that yields a fresh `impl EventStore` and a
/// [`BeginUnitOfWork`] for it. A backend on a connection pool should give the store a pool of
/// **one** connection: a unit of work must do everything on its own connection, and a read
/// through the pool then fails the case instead of passing unnoticed.
///
/// ```ignore
/// dtx::unit_of_work_contract_tests!((dtx::MemoryEventStore::new(), begin_memory()));
/// ```
#[macro_export]
macro_rules! unit_of_work_contract_tests {
    ($setup:expr) => {
        $crate::unit_of_work_contract_tests!(@cases $setup;
            append_in_resends_committed_events,
            append_in_resends_events_of_the_same_unit_of_work,
            closed_streams_refuse_appends_in_units_of_work);
    };
    (@cases $setup:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, begin) = $setup;
                let store: $crate::SharedEventStore = ::std::sync::Arc::new(store);
                $crate::testing::$case(store, begin).await;
            }
        )*
    };
}

fn stream(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", Uuid::now_v7())).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Credited", &Credited { amount: n }).unwrap()
}

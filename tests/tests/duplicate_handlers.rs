//! Two handlers for one query type, or two command handlers registered by hand: the bus
//! refuses to start and names both.
//!
//! (A test binary of its own: the registry is global to a binary.)

#![allow(
    clippy::unused_async,
    clippy::unnecessary_wraps,
    clippy::unused_self,
    clippy::needless_pass_by_value,
    clippy::items_after_statements,
    clippy::case_sensitive_file_extension_comparisons,
    reason = "handlers in tests take the shapes the macros require"
)]
#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::cqrs::{BusError, CommandBus, QueryBus};
use dtx::query_handler;

/// An error never returned.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

// Two `#[command_handler]`s for one command type do not compile: each implements
// `dtx::cqrs::Command` for it (E0119, see the trybuild case `command_handler/fail/two_handlers`).
// The bus still refuses a second handler registered by hand.

/// The query with two handlers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Where;

#[query_handler]
async fn here(_q: Where) -> Result<u8, Never> {
    Ok(1)
}

#[query_handler]
async fn there(_q: Where) -> Result<u8, Never> {
    Ok(2)
}

#[test]
fn duplicate_query_handlers_name_both_locations() {
    match QueryBus::from_registry() {
        Err(BusError::DuplicateHandler { first, second, .. }) => {
            assert_eq!(
                (first.handler, second.handler),
                ("duplicate_handlers::here", "duplicate_handlers::there")
            );
        }
        other => panic!("expected DuplicateHandler, got {other:?}"),
    }
}

#[test]
fn a_hand_registered_duplicate_is_refused_too() {
    struct Pack;
    impl dtx::cqrs::Command for Pack {
        type Output = ();
    }
    let error = CommandBus::builder()
        .handler(|_: Pack, _ctx| async { Ok::<_, Never>(()) })
        .handler(|_: Pack, _ctx| async { Ok::<_, Never>(()) })
        .build()
        .unwrap_err();
    assert!(
        matches!(error, BusError::DuplicateHandler { first, second, .. } if first.line + 1 == second.line)
    );
}

//! Two handlers for one message type: the bus refuses to start and names both.
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
use dtx::{command_handler, query_handler};

/// The command with two handlers.
pub struct Ship;

/// An error never returned.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[command_handler]
async fn ship_by_truck(_cmd: Ship) -> Result<&'static str, Never> {
    Ok("truck")
}

mod elsewhere {
    use super::{Never, Ship};

    #[dtx::command_handler]
    async fn ship_by_boat(_cmd: Ship) -> Result<&'static str, Never> {
        Ok("boat")
    }
}

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
fn duplicate_command_handlers_name_both_locations() {
    let error = CommandBus::from_registry().unwrap_err();
    let BusError::DuplicateHandler {
        message,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateHandler, got {error:?}");
    };
    assert!(message.ends_with("::Ship"), "{message}");
    let mut handlers = [first.handler, second.handler];
    handlers.sort_unstable();
    assert_eq!(
        handlers,
        [
            "duplicate_handlers::elsewhere::ship_by_boat",
            "duplicate_handlers::ship_by_truck"
        ]
    );
    assert!(
        first.file.ends_with("duplicate_handlers.rs")
            && second.file.ends_with("duplicate_handlers.rs")
    );
    // Each location points at its handler's `fn` line.
    let source: Vec<&str> = include_str!("duplicate_handlers.rs").lines().collect();
    for location in [first, second] {
        let line = source[location.line as usize - 1];
        assert!(
            line.contains("async fn ship_by_"),
            "{location} points at {line:?}"
        );
    }
    let text = error.to_string();
    assert!(
        text.contains("ship_by_truck")
            && text.contains("ship_by_boat")
            && text.contains("duplicate_handlers.rs:"),
        "{text}"
    );
    // The order is stable (sorted), whatever the link order.
    assert_eq!(CommandBus::from_registry().unwrap_err(), error);
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
    let error = CommandBus::builder()
        .handler(|_: u32, _ctx| async { Ok::<_, Never>(()) })
        .handler(|_: u32, _ctx| async { Ok::<_, Never>(()) })
        .build()
        .unwrap_err();
    assert!(
        matches!(error, BusError::DuplicateHandler { first, second, .. } if first.line + 1 == second.line)
    );
}

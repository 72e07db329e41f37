//! Two handlers registered by hand for one command or query type: the bus refuses to start and
//! names both.
//!
//! Two `#[command_handler]`s or `#[query_handler]`s for one type do not compile: each
//! implements `dtx::cqrs::Command` (or `Query`) for it, E0119 at both handlers (see the trybuild
//! cases `command_handler/fail/two_handlers` and `query_handler/fail/two_handlers`).

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::cqrs::{BusError, CommandBus, QueryBus};

/// An error never returned.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[test]
fn a_hand_registered_duplicate_command_handler_is_refused() {
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

#[test]
fn a_hand_registered_duplicate_query_handler_is_refused_and_named() {
    struct Where;
    impl dtx::cqrs::Query for Where {
        type Output = u8;
    }
    let error = QueryBus::builder()
        .handler(|_: Where, _ctx| async { Ok::<_, Never>(1) })
        .handler(|_: Where, _ctx| async { Ok::<_, Never>(2) })
        .build()
        .unwrap_err();
    let BusError::DuplicateHandler {
        message,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateHandler, got {error:?}");
    };
    assert!(message.ends_with("::Where"), "{message}");
    assert_eq!(first.line + 1, second.line);
    assert!(first.file.ends_with("duplicate_handlers.rs"));
    let text = error.to_string();
    assert!(text.contains("duplicate_handlers.rs:"), "{text}");
}

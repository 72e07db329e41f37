//! Two `#[projection]`s registered under one name: `dtx::projection::registered()`, which the
//! runner calls at start-up, refuses them and names both declarations.

use dtx::projection;
use dtx::projection::Projection;
use dtx::{DomainEvent, Error};
use serde::{Deserialize, Serialize};

/// A clock ticked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    /// The tick's number.
    pub n: u64,
}

/// The events of a clock.
#[derive(Debug, Clone, DomainEvent)]
pub enum ClockEvent {
    /// See [`Tick`].
    Tick(Tick),
}

/// Counts ticks.
pub struct TickCounter;

#[projection(name = "same")]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl TickCounter {
    async fn on_tick(&self, event: &Tick) -> Result<(), Error> {
        let _ = event.n;
        Ok(())
    }
}

/// Also counts ticks, under the same name by mistake.
pub struct TickAudit;

#[projection(name = "same", subscription)]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl TickAudit {
    async fn on_tick(&self, event: Tick) -> Result<(), Error> {
        let _ = event.n;
        Ok(())
    }
}

#[test]
fn two_projections_with_one_name_are_refused_and_both_are_named() {
    assert_eq!((TickCounter::NAME, TickAudit::NAME), ("same", "same"));
    let error = projection::registered().expect_err("a duplicate name is refused");
    let Error::DuplicateProjection {
        name,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateProjection, got {error:?}");
    };
    assert_eq!(*name, "same");
    // Sorted by file and line: the declaration above first.
    assert!(
        first.starts_with("duplicate_projections::TickCounter ("),
        "{first}"
    );
    assert!(
        second.starts_with("duplicate_projections::TickAudit ("),
        "{second}"
    );
    for location in [first, second] {
        assert!(location.contains("duplicate_projections.rs:"), "{location}");
    }
    let text = error.to_string();
    assert!(
        text.contains("TickCounter") && text.contains("TickAudit"),
        "{text}"
    );
}

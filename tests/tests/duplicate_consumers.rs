//! Two `#[consumer]`s registered under one name: `dtx::inbox::registered()` refuses them and
//! names both declarations.

use dtx::inbox::{self, Consumer};
use dtx::{DomainEvent, Error, consumer};
use serde::{Deserialize, Serialize};

/// A payment was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentTaken {
    /// In cents.
    pub amount: u64,
}

/// The events of a payment.
#[derive(Debug, Clone, DomainEvent)]
pub enum PaymentEvent {
    /// See [`PaymentTaken`].
    PaymentTaken(PaymentTaken),
}

/// Ships paid orders.
pub struct Shipping;

#[consumer(name = "same")]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl Shipping {
    async fn on_taken(&self, event: &PaymentTaken) -> Result<(), Error> {
        let _ = event.amount;
        Ok(())
    }
}

/// Books paid orders, under the same name by mistake.
pub struct Ledger;

#[consumer(name = "same")]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl Ledger {
    async fn on_taken(&self, event: PaymentTaken) -> Result<(), Error> {
        let _ = event.amount;
        Ok(())
    }
}

#[test]
fn two_consumers_with_one_name_are_refused_and_both_are_named() {
    assert_eq!((Shipping::NAME, Ledger::NAME), ("same", "same"));
    let error = inbox::registered().expect_err("a duplicate name is refused");
    let Error::DuplicateConsumer {
        name,
        first,
        second,
    } = &error
    else {
        panic!("expected DuplicateConsumer, got {error:?}");
    };
    assert_eq!(*name, "same");
    // Sorted by file and line: the declaration above first.
    assert!(
        first.starts_with("duplicate_consumers::Shipping ("),
        "{first}"
    );
    assert!(
        second.starts_with("duplicate_consumers::Ledger ("),
        "{second}"
    );
    for location in [first, second] {
        assert!(location.contains("duplicate_consumers.rs:"), "{location}");
    }
    let text = error.to_string();
    assert!(
        text.contains("Shipping") && text.contains("Ledger"),
        "{text}"
    );
}

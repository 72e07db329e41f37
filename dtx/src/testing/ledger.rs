//! The contract suite's aggregate and its events.

use crate::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// Money paid in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credited {
    /// How much.
    pub amount: u64,
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// Money paid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debited {
    /// How much.
    pub amount: u64,
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// The contract suite's event enum.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
// A test fixture, not a published contract.
#[event(schema = false)]
pub enum LedgerEvent {
    /// See [`Credited`].
    Credited(Credited),
    /// See [`Debited`].
    Debited(Debited),
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// The contract suite's aggregate: a balance that must never go negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(event = LedgerEvent, snapshot_every = 10, invariants = Self::never_negative)]
pub struct Ledger {
    id: Id<Ledger>,
    /// The balance.
    pub balance: u64,
    overdrawn: bool,
}

impl Ledger {
    /// The snapshot frequency.
    pub const EVERY: u64 = 10;

    fn never_negative(&self) -> Result<(), &'static str> {
        if self.overdrawn {
            Err("balance would go negative")
        } else {
            Ok(())
        }
    }
}

impl Apply<Credited> for Ledger {
    fn apply(&mut self, event: &Credited) {
        self.balance += event.amount;
    }
}

impl Apply<Debited> for Ledger {
    fn apply(&mut self, event: &Debited) {
        match self.balance.checked_sub(event.amount) {
            Some(balance) => self.balance = balance,
            None => self.overdrawn = true,
        }
    }
}

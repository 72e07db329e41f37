//! Every option of `#[derive(Aggregate)]` that goes with snapshots: `name`, `snapshot_every`,
//! `snapshot_version`, `invariants`, `#[aggregate(id)]` on a field not named `id`, and
//! `crate = ..` through a re-export, used through the generated impls.
#![deny(warnings)]

use serde::{Deserialize, Serialize};

mod re {
    pub(crate) use dtx as runtime;
}

use re::runtime::{Aggregate, AggregateRoot, Apply, DomainEvent, Error, Id, SnapshotPolicy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Credited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Debited {
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(crate = re::runtime)]
enum AccountEvent {
    Credited(Credited),
    Debited(Debited),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(
    crate = re::runtime,
    event = AccountEvent,
    name = "Account",
    snapshot_every = 25,
    snapshot_version = 2,
    invariants = Self::never_negative,
)]
struct BankAccount {
    #[aggregate(id)]
    number: Id<BankAccount>,
    balance: i64,
    history: Vec<i64>,
}

impl BankAccount {
    fn never_negative(&self) -> Result<(), String> {
        if self.balance < 0 {
            Err(format!("balance {} is negative", self.balance))
        } else {
            Ok(())
        }
    }
}

impl Apply<Credited> for BankAccount {
    fn apply(&mut self, event: &Credited) {
        let amount = i64::try_from(event.amount).expect("amount fits");
        self.balance += amount;
        self.history.push(amount);
    }
}

impl Apply<Debited> for BankAccount {
    fn apply(&mut self, event: &Debited) {
        let amount = i64::try_from(event.amount).expect("amount fits");
        self.balance -= amount;
        self.history.push(-amount);
    }
}

fn main() {
    assert_eq!(BankAccount::TYPE, "Account");
    assert_eq!(BankAccount::SNAPSHOT_POLICY, SnapshotPolicy::Every(25));

    let number = Id::<BankAccount>::new();
    let mut account = BankAccount::init(number);
    assert_eq!(account.id(), &number);
    assert_eq!((account.balance, account.history.len()), (0, 0));

    account.apply_event(&Credited { amount: 40 }.into());
    account.apply_event(&AccountEvent::Debited(Debited { amount: 15 }));
    assert_eq!(account.balance, 25);
    assert_eq!(account.history, [40, -15]);
    assert_eq!(account.check_invariants(), Ok(()));

    let snapshot = account
        .snapshot()
        .expect("snapshots are on")
        .expect("state serialises");
    let restored = BankAccount::restore(&snapshot)
        .expect("snapshots are on")
        .expect("state deserialises");
    assert_eq!(restored, account);

    let mut root = AggregateRoot::<BankAccount>::new(Id::new());
    root.record([Credited { amount: 10 }])
        .expect("invariants hold");
    let Err(Error::Invariant {
        aggregate,
        violation,
        ..
    }) = root.record([Debited { amount: 11 }])
    else {
        panic!("an overdraft breaks the invariant")
    };
    assert_eq!(aggregate, "Account");
    assert_eq!(violation.to_string(), "balance -1 is negative");
    assert_eq!(
        root.state().balance,
        10,
        "a rejected event leaves the state as it was"
    );
}

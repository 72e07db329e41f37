//! `dtx::cqrs::testing::AggregateTest`: the README's aggregates (the `Account` of "A first
//! aggregate", with command handlers, and the `Stock` of "Commands and queries") and the
//! examples' `Order`, through given/when/then: stored events, an invariant refusal, a handler's
//! rejection, a validation failure, and the failure messages of broken expectations.

#![allow(clippy::unwrap_used, missing_docs, reason = "tests")]
#![allow(
    clippy::needless_pass_by_value,
    clippy::unnecessary_wraps,
    clippy::unused_self,
    reason = "the handler shapes of the README"
)]

use dtx::cqrs::testing::AggregateTest;
use dtx::cqrs::{CommandError, Committed, Validate, Validator};
use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use examples::order::{
    AddLine, ConfirmOrder, Line, LineAdded, MAX_LINES, Order, OrderConfirmed, OrderError,
    OrderEvent, OrderId, OrderPlaced, PlaceOrder, Status,
};
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;

// ---- README, "A first aggregate" ----------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}

#[derive(Debug, Clone, DomainEvent)]
pub enum AccountEvent {
    Deposited(Deposited),
    #[event(name = "Withdrawn", version = 2)]
    Withdrawn(Withdrawn),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent, snapshot_every = 50, invariants = Self::solvent)]
pub struct Account {
    id: Id<Account>,
    balance: i64,
}

impl Account {
    fn solvent(&self) -> Result<(), String> {
        if self.balance < 0 {
            Err("balance below zero".into())
        } else {
            Ok(())
        }
    }
}

impl Apply<Deposited> for Account {
    #[allow(clippy::cast_possible_wrap, reason = "as in the README")]
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount as i64;
    }
}
impl Apply<Withdrawn> for Account {
    #[allow(clippy::cast_possible_wrap, reason = "as in the README")]
    fn apply(&mut self, e: &Withdrawn) {
        self.balance -= e.amount as i64;
    }
}

// Its commands: a withdrawal is not checked by the handler, so an overdraft reaches the
// aggregate's invariant.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub account_id: Id<Account>,
    pub amount: u64,
}
#[derive(Debug, Clone)]
pub struct Withdraw {
    pub account_id: Id<Account>,
    pub amount: u64,
}

#[command_handler]
impl Account {
    fn deposit(
        _account: Option<&Self>,
        cmd: Deposit,
    ) -> Result<Deposited, std::convert::Infallible> {
        Ok(Deposited { amount: cmd.amount })
    }

    fn withdraw(&self, cmd: &Withdraw) -> Result<Withdrawn, std::convert::Infallible> {
        Ok(Withdrawn { amount: cmd.amount })
    }
}

// ---- README, "Commands and queries" ------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stocked {
    pub quantity: u32,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reserved {
    pub quantity: u32,
}
#[derive(Debug, Clone, DomainEvent)]
pub enum StockEvent {
    Stocked(Stocked),
    Reserved(Reserved),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = StockEvent)]
pub struct Stock {
    id: Id<Stock>,
    on_hand: u32,
    reserved: u32,
}
impl Stock {
    fn available(&self) -> u32 {
        self.on_hand - self.reserved
    }
}
impl Apply<Stocked> for Stock {
    fn apply(&mut self, e: &Stocked) {
        self.on_hand += e.quantity;
    }
}
impl Apply<Reserved> for Stock {
    fn apply(&mut self, e: &Reserved) {
        self.reserved += e.quantity;
    }
}

#[derive(Debug, Clone)]
pub struct AddStock {
    pub stock_id: Id<Stock>,
    pub quantity: u32,
}
#[derive(Debug, Clone)]
pub struct Reserve {
    pub stock_id: Id<Stock>,
    pub quantity: u32,
}

impl Validate for Reserve {
    fn validate(&self, v: &mut Validator) {
        v.check(self.quantity > 0, "quantity", "must be at least 1");
    }
}

#[derive(Debug, thiserror::Error)]
#[error("only {0} left")]
pub struct SoldOut(u32);

#[command_handler]
impl Stock {
    fn add(stock: Option<&Self>, cmd: AddStock) -> Result<Stocked, std::convert::Infallible> {
        let _new = stock.is_none();
        Ok(Stocked {
            quantity: cmd.quantity,
        })
    }

    fn reserve(&self, cmd: &Reserve) -> Result<Reserved, SoldOut> {
        if cmd.quantity > self.available() {
            return Err(SoldOut(self.available()));
        }
        Ok(Reserved {
            quantity: cmd.quantity,
        })
    }
}

/// The message of a panic in `f`.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(AssertUnwindSafe(f)).expect_err("it should panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap()
}

#[tokio::test]
async fn account_deposits_and_withdraws() {
    let account_id = Id::<Account>::new();
    let committed: Committed = AggregateTest::<Account>::new(account_id)
        .when(Deposit {
            account_id,
            amount: 100,
        })
        .await
        .then_events([Deposited { amount: 100 }]);
    assert_eq!((committed.version, committed.events), (1, 1));

    let committed = AggregateTest::<Account>::new(account_id)
        .given([Deposited { amount: 100 }])
        .given([Withdrawn { amount: 30 }])
        .when(Withdraw {
            account_id,
            amount: 70,
        })
        .await
        .then_events([Withdrawn { amount: 70 }]);
    assert_eq!(committed.version, 3, "after the two given events");
}

#[tokio::test]
async fn account_overdraft_is_refused_by_its_invariant() {
    let account_id = Id::<Account>::new();
    let violation = AggregateTest::<Account>::new(account_id)
        .given([Deposited { amount: 100 }])
        .when(Withdraw {
            account_id,
            amount: 500,
        })
        .await
        .then_invariant_violated();
    assert_eq!(violation, "balance below zero");
}

#[tokio::test]
async fn stock_reservation_and_rejection() {
    let stock_id = Id::<Stock>::new();
    AggregateTest::<Stock>::new(stock_id)
        .given([Stocked { quantity: 60 }, Stocked { quantity: 40 }])
        .when(Reserve {
            stock_id,
            quantity: 3,
        })
        .await
        .then_events([Reserved { quantity: 3 }]);

    let sold_out: SoldOut = AggregateTest::<Stock>::new(stock_id)
        .given([StockEvent::from(Stocked { quantity: 5 })])
        .given([Reserved { quantity: 4 }])
        .when(Reserve {
            stock_id,
            quantity: 2,
        })
        .await
        .then_rejected();
    assert_eq!(sold_out.to_string(), "only 1 left");
}

#[tokio::test]
async fn stock_commands_the_bus_refuses_before_the_handler() {
    let stock_id = Id::<Stock>::new();
    // Validation runs before the handler.
    let invalid = AggregateTest::<Stock>::new(stock_id)
        .given([Stocked { quantity: 5 }])
        .when(Reserve {
            stock_id,
            quantity: 0,
        })
        .await
        .then_error(|e| matches!(e, CommandError::Invalid { .. }));
    assert!(
        invalid.to_string().contains("must be at least 1"),
        "{invalid}"
    );

    // An update of an aggregate with no events.
    AggregateTest::<Stock>::new(stock_id)
        .when(Reserve {
            stock_id,
            quantity: 1,
        })
        .await
        .then_error(|e| matches!(e, CommandError::NotFound { .. }));

    // An upsert creates it.
    AggregateTest::<Stock>::new(stock_id)
        .when(AddStock {
            stock_id,
            quantity: 7,
        })
        .await
        .then_events([Stocked { quantity: 7 }]);
}

#[tokio::test]
async fn order_from_the_examples() {
    let order_id = OrderId::new();
    let line = |sku: &str| Line {
        sku: sku.into(),
        quantity: 2,
        unit_price_cents: 150,
    };
    let placed = OrderPlaced {
        customer: "ada".into(),
    };

    AggregateTest::<Order>::new(order_id)
        .when(PlaceOrder {
            order_id,
            customer: "ada".into(),
        })
        .await
        .then_events([placed.clone()]);

    let then = AggregateTest::<Order>::new(order_id)
        .given([OrderEvent::from(placed.clone())])
        .given([LineAdded { line: line("tea") }])
        .when(ConfirmOrder { order_id })
        .await;
    assert!(matches!(then.events()[..], [OrderEvent::Confirmed(_)]));
    then.then_events([OrderConfirmed { total_cents: 300 }]);

    // The handler refuses a confirmation without lines.
    let refused: OrderError = AggregateTest::<Order>::new(order_id)
        .given([placed.clone()])
        .when(ConfirmOrder { order_id })
        .await
        .then_rejected();
    assert_eq!(refused, OrderError::NoLines);

    // A confirmed order takes no more lines.
    let refused: OrderError = AggregateTest::<Order>::new(order_id)
        .given([
            OrderEvent::from(placed.clone()),
            LineAdded { line: line("tea") }.into(),
            OrderConfirmed { total_cents: 300 }.into(),
        ])
        .when(AddLine {
            order_id,
            line: line("cake"),
        })
        .await
        .then_rejected();
    assert_eq!(refused, OrderError::WrongStatus(Status::Confirmed));

    // The 21st line breaks the order's invariant.
    let full = (0..MAX_LINES).map(|i| LineAdded {
        line: line(&format!("sku-{i}")),
    });
    let violation = AggregateTest::<Order>::new(order_id)
        .given([placed])
        .given(full)
        .when(AddLine {
            order_id,
            line: line("one-too-many"),
        })
        .await
        .then_invariant_violated();
    assert_eq!(
        violation,
        format!("an order holds at most {MAX_LINES} lines")
    );
}

#[tokio::test]
async fn broken_expectations_say_what_differs() {
    let stock_id = Id::<Stock>::new();
    let then = AggregateTest::<Stock>::new(stock_id)
        .given([Stocked { quantity: 5 }])
        .when(Reserve {
            stock_id,
            quantity: 3,
        })
        .await;
    let message = panic_message(|| {
        then.then_events([Reserved { quantity: 4 }]);
    });
    assert!(
        message.contains("stored other events than expected"),
        "{message}"
    );
    assert!(
        message.contains("expected:\n      1. Reserved {\"quantity\":4}"),
        "{message}"
    );
    assert!(
        message.contains("actual:\n      1. Reserved {\"quantity\":3}"),
        "{message}"
    );

    let then = AggregateTest::<Stock>::new(stock_id)
        .given([Stocked { quantity: 1 }])
        .when(Reserve {
            stock_id,
            quantity: 3,
        })
        .await;
    let message = panic_message(|| {
        then.then_events([Reserved { quantity: 3 }]);
    });
    assert!(
        message.contains("should have stored events, but it failed: command"),
        "{message}"
    );
    assert!(message.contains("only 1 left"), "{message}");

    let then = AggregateTest::<Stock>::new(stock_id)
        .given([Stocked { quantity: 5 }])
        .when(Reserve {
            stock_id,
            quantity: 3,
        })
        .await;
    let message = panic_message(|| {
        then.then_rejected::<SoldOut>();
    });
    assert!(message.contains("but it succeeded"), "{message}");
    assert!(
        message.contains("1. Reserved {\"quantity\":3}"),
        "{message}"
    );

    // A command for another aggregate than the fixture's: its stream is named.
    let other = Id::<Stock>::new();
    let then = AggregateTest::<Stock>::new(stock_id)
        .when(AddStock {
            stock_id: other,
            quantity: 1,
        })
        .await;
    let message = panic_message(|| {
        then.then_events([Stocked { quantity: 1 }]);
    });
    assert!(
        message.contains(&format!("(in stream `Stock-{other}`)")),
        "{message}"
    );
}

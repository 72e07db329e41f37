//! An order aggregate: placed, lines added, confirmed, paid, shipped or cancelled.

use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

/// An order's id.
pub type OrderId = Id<Order>;

/// The most lines one order may hold.
pub const MAX_LINES: usize = 20;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, in cents.
    pub unit_price_cents: u64,
}

/// A customer placed an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Who ordered.
    pub customer: String,
}

/// A line was added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineAdded {
    /// The line.
    pub line: Line,
}

/// The customer confirmed the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The total at confirmation, in cents.
    pub total_cents: u64,
}

/// The order was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Why.
    pub reason: String,
}

/// Everything that can happen to an order.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum OrderEvent {
    /// See [`OrderPlaced`].
    Placed(OrderPlaced),
    /// See [`LineAdded`].
    LineAdded(LineAdded),
    /// See [`OrderConfirmed`].
    Confirmed(OrderConfirmed),
    /// See [`OrderCancelled`].
    #[event(name = "OrderCancelled", version = 1)]
    Cancelled(OrderCancelled),
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, lines can be added.
    Open,
    /// Confirmed by the customer.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order is not in a state that allows the command.
    #[error("order is {0:?}")]
    WrongStatus(Status),
    /// A line with no quantity.
    #[error("quantity must be at least 1")]
    EmptyLine,
    /// Confirming an order without lines.
    #[error("an order needs at least one line")]
    NoLines,
}

/// The order aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(event = OrderEvent, snapshot_every = 5, invariants = Self::check)]
pub struct Order {
    id: OrderId,
    /// Who ordered.
    pub customer: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// Where the order is.
    pub status: Status,
}

impl Order {
    /// The total in cents.
    pub fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| u64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }

    /// Command: place the order.
    pub fn place(&self, customer: &str) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::New => Ok(vec![
                OrderPlaced {
                    customer: customer.to_owned(),
                }
                .into(),
            ]),
            other => Err(OrderError::WrongStatus(other)),
        }
    }

    /// Command: add a line.
    pub fn add_line(&self, line: Line) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != Status::Open {
            return Err(OrderError::WrongStatus(self.status));
        }
        if line.quantity == 0 {
            return Err(OrderError::EmptyLine);
        }
        Ok(vec![LineAdded { line }.into()])
    }

    /// Command: confirm the order.
    pub fn confirm(&self) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Open if self.lines.is_empty() => Err(OrderError::NoLines),
            Status::Open => Ok(vec![
                OrderConfirmed {
                    total_cents: self.total_cents(),
                }
                .into(),
            ]),
            other => Err(OrderError::WrongStatus(other)),
        }
    }

    /// Command: cancel the order.
    pub fn cancel(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Status::Open | Status::Confirmed => Ok(vec![
                OrderCancelled {
                    reason: reason.to_owned(),
                }
                .into(),
            ]),
            other => Err(OrderError::WrongStatus(other)),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.lines.len() > MAX_LINES {
            return Err(format!("an order holds at most {MAX_LINES} lines"));
        }
        Ok(())
    }
}

impl Apply<OrderPlaced> for Order {
    fn apply(&mut self, event: &OrderPlaced) {
        self.customer.clone_from(&event.customer);
        self.status = Status::Open;
    }
}

impl Apply<LineAdded> for Order {
    fn apply(&mut self, event: &LineAdded) {
        self.lines.push(event.line.clone());
    }
}

impl Apply<OrderConfirmed> for Order {
    fn apply(&mut self, _: &OrderConfirmed) {
        self.status = Status::Confirmed;
    }
}

impl Apply<OrderCancelled> for Order {
    fn apply(&mut self, _: &OrderCancelled) {
        self.status = Status::Cancelled;
    }
}

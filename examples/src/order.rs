//! An order aggregate: placed, lines added, confirmed, paid, shipped or cancelled.

use dtx::cqrs::{State, Validate, Validator};
use dtx::{
    Aggregate, Apply, DomainEvent, DtxConfig, Id, Repository, SharedEventStore, command_handler,
    query_handler,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An order's id.
pub type OrderId = Id<Order>;

/// The most lines one order may hold.
pub const MAX_LINES: usize = 20;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Line {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Price of one, in cents.
    pub unit_price_cents: u64,
}

/// A customer placed an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    /// Who ordered.
    pub customer: String,
}

/// A line was added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LineAdded {
    /// The line.
    pub line: Line,
}

/// The customer confirmed the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    /// The total at confirmation, in cents.
    pub total_cents: u64,
}

/// The order was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Confirming an order without lines.
    #[error("an order needs at least one line")]
    NoLines,
    /// Placing an order without a customer.
    #[error("an order needs a customer")]
    NoCustomer,
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

    fn check(&self) -> Result<(), String> {
        if self.lines.len() > MAX_LINES {
            return Err(format!("an order holds at most {MAX_LINES} lines"));
        }
        Ok(())
    }
}

/// Place a new order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The new order's id.
    pub order_id: OrderId,
    /// Who orders.
    pub customer: String,
}

/// Add a line to an open order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddLine {
    /// The order.
    pub order_id: OrderId,
    /// The line.
    pub line: Line,
}

/// Confirm an open order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmOrder {
    /// The order.
    pub order_id: OrderId,
}

/// Cancel an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// The order.
    pub order_id: OrderId,
    /// Why.
    pub reason: String,
}

impl Validate for AddLine {
    fn validate(&self, v: &mut Validator) {
        v.check(
            !self.line.sku.trim().is_empty(),
            "line.sku",
            "must not be empty",
        );
        v.check(
            self.line.quantity > 0,
            "line.quantity",
            "must be at least 1",
        );
        v.check(
            self.line.unit_price_cents > 0,
            "line.unit_price_cents",
            "must be positive",
        );
    }
}

#[command_handler]
impl Order {
    /// Places the order (creates the aggregate).
    pub fn place(cmd: PlaceOrder) -> Result<OrderPlaced, OrderError> {
        if cmd.customer.trim().is_empty() {
            return Err(OrderError::NoCustomer);
        }
        Ok(OrderPlaced {
            customer: cmd.customer,
        })
    }

    /// Adds a line.
    pub fn add_line(&self, cmd: AddLine) -> Result<LineAdded, OrderError> {
        if self.status != Status::Open {
            return Err(OrderError::WrongStatus(self.status));
        }
        Ok(LineAdded { line: cmd.line })
    }

    /// Confirms the order.
    pub fn confirm(&self, _cmd: &ConfirmOrder) -> Result<OrderConfirmed, OrderError> {
        match self.status {
            Status::Open if self.lines.is_empty() => Err(OrderError::NoLines),
            Status::Open => Ok(OrderConfirmed {
                total_cents: self.total_cents(),
            }),
            other => Err(OrderError::WrongStatus(other)),
        }
    }

    /// Cancels the order.
    pub fn cancel(&self, cmd: &CancelOrder) -> Result<OrderCancelled, OrderError> {
        match self.status {
            Status::Open | Status::Confirmed => Ok(OrderCancelled {
                reason: cmd.reason.clone(),
            }),
            other => Err(OrderError::WrongStatus(other)),
        }
    }
}

/// Summary of one order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderSummary {
    /// Who ordered.
    pub customer: String,
    /// How many lines.
    pub lines: usize,
    /// The total in cents.
    pub total_cents: u64,
    /// Where the order is.
    pub status: Status,
    /// The stream version the summary reflects.
    pub version: u64,
}

/// Ask for an order's summary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GetOrderSummary {
    /// The order.
    pub order_id: OrderId,
}

/// Answers [`GetOrderSummary`] from the event store; cached for five seconds.
#[query_handler(cache(ttl_secs = 5, capacity = 10_000))]
pub async fn order_summary(
    query: GetOrderSummary,
    State(store): State<SharedEventStore>,
) -> Result<OrderSummary, dtx::Error> {
    let orders = Repository::<Order>::shared(store, &DtxConfig::default());
    let order = orders.load(&query.order_id).await?;
    let state = order.state();
    Ok(OrderSummary {
        customer: state.customer.clone(),
        lines: state.lines.len(),
        total_cents: state.total_cents(),
        status: state.status,
        version: order.version(),
    })
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

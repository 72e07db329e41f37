use dtx::{DomainEvent, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InvoicePlaced {
    amount: u64,
}

#[derive(Debug, Clone, DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

/// Its variant is stored under the name `Placed` too.
#[derive(Debug, Clone, DomainEvent)]
enum InvoiceEvent {
    Placed(InvoicePlaced),
}

struct Ledger;

#[projection]
impl Ledger {
    async fn on_order(&self, event: &OrderPlaced) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }

    async fn on_invoice(&self, event: &InvoicePlaced) -> Result<(), String> {
        let _ = event.amount;
        Ok(())
    }
}

fn main() {}

use dtx::{DomainEvent, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

struct OrderSummary;

/// A struct no `DomainEvent` enum wraps.
struct OrderViewed {
    customer: String,
}

#[projection]
impl OrderSummary {
    async fn on_placed(&self, event: &OrderPlaced) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }

    async fn on_viewed(&self, event: &OrderViewed) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }
}

fn main() {}

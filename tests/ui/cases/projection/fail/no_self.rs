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

#[projection]
impl OrderSummary {
    async fn on_placed(event: &OrderPlaced) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }
}

fn main() {}

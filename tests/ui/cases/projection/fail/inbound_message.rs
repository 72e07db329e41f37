use dtx::inbox::InboundMessage;
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
    async fn on_placed(&self, event: &OrderPlaced, message: &InboundMessage) -> Result<(), String> {
        let _ = (&event.customer, message);
        Ok(())
    }
}

fn main() {}

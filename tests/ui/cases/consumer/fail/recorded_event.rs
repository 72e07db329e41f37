use dtx::{DomainEvent, consumer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

struct Payments;

use dtx::RecordedEvent;

#[consumer]
impl Payments {
    async fn on_placed(&self, event: &OrderPlaced, meta: &RecordedEvent) -> Result<(), String> {
        let _ = (&event.customer, meta);
        Ok(())
    }
}

fn main() {}

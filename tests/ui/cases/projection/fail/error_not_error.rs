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

#[derive(Debug)]
enum SummaryError {
    Full,
}

#[projection]
impl OrderSummary {
    async fn on_placed(&self, event: &OrderPlaced) -> Result<(), SummaryError> {
        if event.customer.is_empty() {
            return Err(SummaryError::Full);
        }
        Ok(())
    }
}

fn main() {}

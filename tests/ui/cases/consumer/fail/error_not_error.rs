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

/// Not an error type: no `std::error::Error` impl.
#[derive(Debug)]
enum ChargeError {
    Declined,
}

struct Payments;

#[consumer]
impl Payments {
    async fn on_placed(&self, event: &OrderPlaced) -> Result<(), ChargeError> {
        let _ = &event.customer;
        Err(ChargeError::Declined)
    }
}

fn main() {}

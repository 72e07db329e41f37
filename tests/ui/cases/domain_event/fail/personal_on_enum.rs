use dtx::DomainEvent;
use dtx::personal::Personal;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CustomerRegistered {
    customer_id: String,
    name: Personal<String>,
}

#[derive(DomainEvent)]
#[event(personal(subject = customer_id))]
enum CustomerEvent {
    Registered(CustomerRegistered),
}

fn main() {}

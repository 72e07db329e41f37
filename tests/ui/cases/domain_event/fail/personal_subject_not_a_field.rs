use dtx::DomainEvent;
use dtx::personal::Personal;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CustomerRegistered {
    customer_id: String,
    name: Personal<String>,
}

#[derive(DomainEvent)]
enum CustomerEvent {
    #[event(personal(subject = client_id))]
    Registered(CustomerRegistered),
}

fn main() {}

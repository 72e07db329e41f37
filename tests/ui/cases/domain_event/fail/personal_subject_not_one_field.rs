use dtx::DomainEvent;
use dtx::personal::Personal;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Customer {
    id: String,
}

#[derive(Serialize, Deserialize)]
struct CustomerRegistered {
    customer: Customer,
    name: Personal<String>,
}

#[derive(DomainEvent)]
enum CustomerEvent {
    #[event(personal(subject = customer.id, fields = name))]
    Registered(CustomerRegistered),
}

fn main() {}

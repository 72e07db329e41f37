use dtx::DomainEvent;

struct OrderPlaced {
    customer: String,
}

#[derive(DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

fn main() {}

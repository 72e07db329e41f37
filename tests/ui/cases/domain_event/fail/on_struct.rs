use dtx::DomainEvent;

#[derive(DomainEvent)]
struct OrderPlaced {
    customer: String,
}

fn main() {}

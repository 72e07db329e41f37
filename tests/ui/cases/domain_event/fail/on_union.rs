use dtx::DomainEvent;

#[derive(DomainEvent)]
union OrderEvent {
    placed: u32,
    shipped: u64,
}

fn main() {}

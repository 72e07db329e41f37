use dtx::DomainEvent;

#[derive(DomainEvent)]
enum OrderEvent {}

fn main() {}

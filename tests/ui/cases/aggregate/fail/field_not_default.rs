use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Status {
    Open,
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    id: Id<Ticket>,
    status: Status,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}

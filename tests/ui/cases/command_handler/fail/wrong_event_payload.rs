use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

#[derive(Debug, Clone)]
struct OpenTicket {
    ticket_id: Id<Ticket>,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shipped {}

#[derive(Debug, Clone, DomainEvent)]
enum ParcelEvent {
    Shipped(Shipped),
}

#[command_handler]
impl Ticket {
    fn open(_cmd: OpenTicket) -> Result<Shipped, Refused> {
        Ok(Shipped {})
    }
}

fn main() {}

use dtx::cqrs::CommandBus;
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

#[command_handler]
impl Ticket {
    fn open(_cmd: &OpenTicket) -> Result<Opened, Refused> {
        Ok(Opened {})
    }
}

async fn open(bus: &CommandBus) {
    // The handler of an aggregate command returns `Committed`, not a `String`.
    let _: String = bus
        .execute(OpenTicket { ticket_id: Id::new() })
        .await
        .unwrap();
}

fn main() {
    let _ = open;
}

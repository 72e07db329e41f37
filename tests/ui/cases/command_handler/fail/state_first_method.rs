use dtx::cqrs::State;
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

#[derive(Clone)]
struct Clock;

#[command_handler]
impl Ticket {
    fn open(&self, _clock: State<Clock>, _cmd: OpenTicket) -> Result<Opened, Refused> {
        Ok(Opened {})
    }
}

fn main() {}

//! `#[derive(Aggregate)]` with `snapshots = false` (so no `Serialize`/`Deserialize`), a field
//! named `id`, and a hand-written `AggregateId` newtype.
#![deny(warnings)]

use dtx::{Aggregate, AggregateId, Apply, DomainEvent, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TicketNumber(u32);

impl fmt::Display for TicketNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

impl AggregateId for TicketNumber {
    fn parse_id(text: &str) -> Option<Self> {
        text.strip_prefix('T')?.parse().ok().map(Self)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {
    title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Closed {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
    Closed(Closed),
}

/// Not serialisable: fine without snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
enum Status {
    #[default]
    New,
    Open(String),
    Closed,
}

#[derive(Debug, Clone, Aggregate)]
#[aggregate(event = TicketEvent, snapshots = false)]
struct Ticket {
    id: TicketNumber,
    status: Status,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, event: &Opened) {
        self.status = Status::Open(event.title.clone());
    }
}

impl Apply<Closed> for Ticket {
    fn apply(&mut self, _: &Closed) {
        self.status = Status::Closed;
    }
}

fn main() {
    assert_eq!(Ticket::TYPE, "Ticket");
    assert_eq!(Ticket::SNAPSHOT_POLICY, SnapshotPolicy::Never);

    let mut ticket = Ticket::init(TicketNumber(7));
    assert_eq!(ticket.id(), &TicketNumber(7));
    assert_eq!(ticket.status, Status::New);
    assert_eq!(
        Ticket::stream_id(ticket.id())
            .expect("valid stream id")
            .to_string(),
        "Ticket-T7"
    );
    assert_eq!(TicketNumber::parse_id("T7"), Some(TicketNumber(7)));

    ticket.apply_event(
        &Opened {
            title: "printer".into(),
        }
        .into(),
    );
    assert_eq!(ticket.status, Status::Open("printer".into()));
    ticket.apply_event(&Closed {}.into());
    assert_eq!(ticket.status, Status::Closed);

    assert!(ticket.snapshot().is_none(), "no snapshots");
    assert_eq!(ticket.check_invariants(), Ok(()));
}

//! Every form of `#[consumer]`: handlers with every parameter (in any order, the event by
//! reference or by value), `name`, a derived name, and `crate = ..` through a re-export; run
//! through an `Inbox` on the in-memory store.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

mod re {
    pub(crate) use dtx as runtime;
}

use re::runtime::inbox::{self, Consumer, Handled, InboundMessage, Inbox, MemoryInbox, Refused};
use re::runtime::{DomainEvent, UnitOfWork};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderShipped {
    carrier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderCancelled {
    reason: String,
}

#[derive(Debug, Clone, DomainEvent)]
#[event(crate = re::runtime)]
enum OrderEvent {
    Placed(OrderPlaced),
    #[event(name = "OrderShipped", version = 2)]
    Shipped(OrderShipped),
    Cancelled(OrderCancelled),
}

#[derive(Default)]
struct OrderLog {
    lines: Mutex<Vec<String>>,
}

impl OrderLog {
    fn push(&self, line: String) {
        self.lines.lock().expect("not poisoned").push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("not poisoned").clone()
    }
}

#[re::runtime::consumer(name = "order-log", crate = re::runtime)]
#[allow(clippy::unused_async, reason = "the handlers do no I/O")]
impl OrderLog {
    async fn on_placed(
        &self,
        event: &OrderPlaced,
        uow: &mut dyn UnitOfWork,
        message: &InboundMessage,
    ) -> Result<(), re::runtime::Error> {
        self.push(format!(
            "placed {} #{} {}",
            event.customer,
            message.delivery,
            uow.backend()
        ));
        Ok(())
    }

    async fn on_shipped(
        &self,
        event: OrderShipped,
        message: &InboundMessage,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), String> {
        let _ = uow.backend();
        self.push(format!(
            "shipped {} v{:?}",
            event.carrier, message.schema_version
        ));
        Ok(())
    }

    /// Fails: the inbox retries it, then dead-letters it.
    async fn on_cancelled(&self, event: &OrderCancelled) -> Result<(), std::io::Error> {
        Err(std::io::Error::other(event.reason.clone()))
    }
}

#[derive(Default)]
struct Mailer {
    sent: Mutex<u32>,
}

#[re::runtime::consumer(crate = re::runtime)]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl Mailer {
    async fn on_placed(&self, _event: OrderPlaced) -> Result<(), String> {
        *self.sent.lock().expect("not poisoned") += 1;
        Ok(())
    }
}

fn message(event: &OrderEvent) -> InboundMessage {
    let payload = event
        .to_payload()
        .expect("serialisable")
        .get()
        .as_bytes()
        .to_vec();
    let mut message = InboundMessage::new(re::runtime::Uuid::now_v7(), event.event_type(), payload);
    message.schema_version = Some(event.schema_version());
    message
}

async fn run() {
    assert_eq!(OrderLog::NAME, "order-log");
    assert_eq!(
        OrderLog::event_types(),
        ["Placed", "OrderShipped", "Cancelled"]
    );
    assert_eq!(
        (Mailer::NAME, Mailer::event_types()),
        ("mailer", &["Placed"][..])
    );

    let inbox = Inbox::new(MemoryInbox::new());
    let log = OrderLog::default();
    let placed = message(
        &OrderPlaced {
            customer: "ada".into(),
        }
        .into(),
    );
    let shipped = message(
        &OrderShipped {
            carrier: "post".into(),
        }
        .into(),
    );
    let cancelled = message(
        &OrderCancelled {
            reason: "late".into(),
        }
        .into(),
    );
    assert_eq!(
        inbox.receive(&log, &placed).await.ok(),
        Some(Handled::Applied)
    );
    assert_eq!(
        inbox.receive(&log, &placed).await.ok(),
        Some(Handled::Duplicate)
    );
    assert_eq!(
        inbox.receive(&log, &shipped).await.ok(),
        Some(Handled::Applied)
    );
    let failed = inbox.receive(&log, &cancelled).await;
    assert!(matches!(&failed, Err(Refused::Retry(e)) if e.to_string() == "late"));

    let mut malformed = placed.clone();
    malformed.message_id = re::runtime::Uuid::now_v7();
    malformed.payload = b"{}".to_vec();
    let poison = inbox.receive(&log, &malformed).await;
    assert!(matches!(poison, Err(Refused::Poison(_))), "{poison:?}");

    let mut other = shipped.clone();
    other.message_id = re::runtime::Uuid::now_v7();
    other.event_type = "Refunded".into();
    assert_eq!(
        inbox.receive(&log, &other).await.ok(),
        Some(Handled::Ignored)
    );

    assert_eq!(
        log.lines(),
        ["placed ada #1 memory", "shipped post vSome(2)"].map(String::from)
    );

    let mailer = Mailer::default();
    assert_eq!(
        inbox.receive(&mailer, &placed).await.ok(),
        Some(Handled::Applied)
    );
    assert_eq!(*mailer.sent.lock().expect("not poisoned"), 1);

    let registered = inbox::registered().expect("distinct names");
    let names: Vec<&str> = registered.iter().map(|r| r.name).collect();
    assert_eq!(names, ["mailer", "order-log"]);
    assert!(registered[1].location().contains("all_forms.rs"));
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(run());
}

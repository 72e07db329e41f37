//! Every form of `#[projection]`: a read model with every handler parameter (in any order, the
//! event by reference or by value) and a `#[clear]` method, a subscription, `name`, `version`,
//! and `crate = ..` through a re-export; run through the generated `Projection` impl.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

mod re {
    pub(crate) use dtx as runtime;
}

use re::runtime::projection::{self, HandlerError, Invalidations, Projection, ProjectionKind};
use re::runtime::{
    DomainEvent, EventMetadata, GlobalPosition, MemoryUnitOfWork, RecordedEvent, StreamId,
    UnitOfWork,
};

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

/// A second enum wrapping one payload of the first: it opts out of the payload's `Event` impl.
#[derive(Debug, Clone, DomainEvent)]
#[event(crate = re::runtime, payload_impl = false)]
enum AuditEvent {
    Placed(OrderPlaced),
}

/// A cached query of the read model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GetOrders;

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

#[re::runtime::projection(name = "order-log", version = 3, crate = re::runtime)]
#[allow(clippy::unused_async, reason = "the handlers do no I/O")]
impl OrderLog {
    async fn on_placed(
        &self,
        event: &OrderPlaced,
        inv: &mut Invalidations,
        uow: &mut dyn UnitOfWork,
        meta: &RecordedEvent,
    ) -> Result<(), re::runtime::Error> {
        inv.all::<GetOrders>();
        self.push(format!(
            "placed {} v{} {}",
            event.customer,
            meta.version,
            uow.backend()
        ));
        Ok(())
    }

    async fn on_shipped(&self, event: OrderShipped) -> Result<(), String> {
        self.push(format!("shipped {}", event.carrier));
        Ok(())
    }

    /// Fails: the runner retries it, then stops the projection.
    async fn on_cancelled(&self, event: &OrderCancelled) -> Result<(), std::io::Error> {
        Err(std::io::Error::other(event.reason.clone()))
    }

    #[clear]
    async fn reset(&self, uow: &mut dyn UnitOfWork) -> Result<(), String> {
        let _ = uow.backend();
        self.lines.lock().expect("not poisoned").clear();
        Ok(())
    }
}

#[derive(Default)]
struct Mailer {
    sent: Mutex<Vec<String>>,
}

#[re::runtime::projection(subscription, crate = re::runtime)]
#[allow(clippy::unused_async, reason = "the handler does no I/O")]
impl Mailer {
    async fn on_placed(&self, event: &OrderPlaced, meta: &RecordedEvent) -> Result<(), String> {
        let key = meta.event_id.to_string();
        self.sent
            .lock()
            .expect("not poisoned")
            .push(format!("{key}: {}", event.customer));
        Ok(())
    }
}

fn recorded(event: &OrderEvent) -> RecordedEvent {
    RecordedEvent {
        stream_id: StreamId::new("Order-1").expect("a valid stream id"),
        version: 1,
        position: GlobalPosition::START,
        event_id: re::runtime::Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        data: event.to_payload().expect("serialisable").get().into(),
        metadata: EventMetadata::default(),
        recorded_at: std::time::SystemTime::now().into(),
    }
}

async fn run() {
    assert_eq!(
        (OrderLog::NAME, OrderLog::VERSION, OrderLog::KIND),
        ("order-log", 3, ProjectionKind::ReadModel)
    );
    assert_eq!(
        OrderLog::event_types(),
        ["Placed", "OrderShipped", "Cancelled"]
    );
    assert_eq!(
        (Mailer::NAME, Mailer::VERSION, Mailer::KIND),
        ("mailer", 1, ProjectionKind::Subscription)
    );
    assert_eq!(Mailer::event_types(), ["Placed"]);
    let _ = AuditEvent::from(OrderPlaced {
        customer: "audit".into(),
    });

    let log = OrderLog::default();
    let placed = recorded(
        &OrderPlaced {
            customer: "ada".into(),
        }
        .into(),
    );
    let mut uow = MemoryUnitOfWork::new();
    let mut inv = Invalidations::default();
    log.handle(&placed, Some(&mut uow), &mut inv)
        .await
        .expect("handled");
    assert!(!inv.is_empty(), "the handler invalidated a query");

    // A read-model handler that writes through a unit of work, given none: an error, no panic.
    let missing = log
        .handle(&placed, None, &mut Invalidations::default())
        .await;
    assert!(
        matches!(missing, Err(HandlerError::Failed(_))),
        "{missing:?}"
    );

    let shipped = recorded(
        &OrderShipped {
            carrier: "post".into(),
        }
        .into(),
    );
    log.handle(&shipped, None, &mut Invalidations::default())
        .await
        .expect("handled without a unit of work");

    let cancelled = recorded(
        &OrderCancelled {
            reason: "late".into(),
        }
        .into(),
    );
    let failed = log
        .handle(&cancelled, None, &mut Invalidations::default())
        .await;
    assert!(matches!(&failed, Err(HandlerError::Failed(e)) if e.to_string() == "late"));

    // A payload that does not decode, and a newer schema version: decode errors.
    let mut malformed = placed.clone();
    malformed.data = "{}".into();
    let error = log
        .handle(&malformed, Some(&mut uow), &mut Invalidations::default())
        .await;
    assert!(matches!(error, Err(HandlerError::Decode(_))), "{error:?}");
    let mut newer = shipped.clone();
    newer.schema_version = 3;
    let error = log
        .handle(&newer, None, &mut Invalidations::default())
        .await;
    assert!(matches!(error, Err(HandlerError::Decode(_))), "{error:?}");

    // An event type it does not handle is ignored.
    let mut other = shipped.clone();
    other.event_type = "Refunded".into();
    log.handle(&other, None, &mut Invalidations::default())
        .await
        .expect("ignored");

    assert_eq!(log.lines(), ["placed ada v1 memory", "shipped post"]);
    Projection::clear(&log, &mut uow).await.expect("cleared");
    assert!(log.lines().is_empty());

    let mailer = Mailer::default();
    mailer
        .handle(&placed, None, &mut Invalidations::default())
        .await
        .expect("sent");
    assert_eq!(mailer.sent.lock().expect("not poisoned").len(), 1);

    let registered = projection::registered().expect("distinct names");
    let names: Vec<&str> = registered.iter().map(|r| r.name).collect();
    assert_eq!(names, ["mailer", "order-log"]);
    assert!(registered[1].location().contains("all_options.rs"));
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(run());
}

//! Every option of `#[saga]` and `#[step]`, run by a worker to completion and to compensation:
//! `name`, `version`, `max_retries`, `step_timeout_secs`, `deadline_secs` and `crate = ..`
//! through a re-export; steps with and without `ctx: &StepContext`, a compensation, a renamed
//! step with its own retries that awaits an external event, and a step returning events of a
//! `#[derive(DomainEvent)]` enum.
#![deny(warnings)]

use serde::{Deserialize, Serialize};
use std::sync::Arc;

mod re {
    pub(crate) use dtx as runtime;
}

use re::runtime::saga::{
    MemorySagaStore, SagaEvent, SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions,
};
use re::runtime::{DomainEvent, EventStore, MemoryEventStore, StreamId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shipped {
    parcel: String,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(crate = re::runtime)]
enum CheckoutEvent {
    Shipped(Shipped),
}

/// Delivered to the saga while it waits after `PAY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentConfirmed {
    reference: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout {
    address: String,
    reserved: bool,
    payment_requested: bool,
    payment: Option<String>,
    parcel: Option<String>,
}

#[re::runtime::saga(
    crate = re::runtime,
    name = "Checkout",
    version = 2,
    max_retries = 0,
    step_timeout_secs = 30,
    deadline_secs = 3600,
)]
impl Checkout {
    #[step(compensate = release)]
    #[expect(clippy::unused_async, reason = "a real step calls the warehouse")]
    async fn reserve(&mut self) -> Result<(), StepError> {
        self.reserved = true;
        Ok(())
    }

    #[expect(
        clippy::unused_async,
        reason = "a real compensation calls the warehouse"
    )]
    async fn release(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        assert_eq!(ctx.phase(), "compensation");
        self.reserved = false;
        Ok(())
    }

    #[step(
        name = "PAY",
        retries = 2,
        compensate = cancel_payment,
        await_event = "PaymentConfirmed",
        await_timeout_secs = 600,
    )]
    #[expect(clippy::unused_async, reason = "a real step calls the payment service")]
    async fn request_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        assert_eq!(ctx.step(), "PAY");
        self.payment_requested = true;
        Ok(())
    }

    #[expect(
        clippy::unused_async,
        reason = "a real compensation calls the payment service"
    )]
    async fn cancel_payment(&mut self) -> Result<(), StepError> {
        self.payment = None;
        Ok(())
    }

    #[step]
    #[expect(clippy::unused_async, reason = "a real step calls the carrier")]
    async fn ship(&mut self, ctx: &StepContext) -> Result<CheckoutEvent, StepError> {
        let confirmed: PaymentConfirmed = ctx
            .event("PaymentConfirmed")
            .ok_or_else(|| StepError::permanent("no payment confirmation"))??;
        self.payment = Some(confirmed.reference);
        if self.address.is_empty() {
            return Err(StepError::permanent("no address to ship to"));
        }
        let parcel = format!("parcel to {}", self.address);
        self.parcel = Some(parcel.clone());
        Ok(CheckoutEvent::Shipped(Shipped { parcel }))
    }
}

fn checkout(address: &str) -> Checkout {
    Checkout {
        address: address.to_owned(),
        ..Checkout::default()
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let events = Arc::new(MemoryEventStore::new());
    let sagas = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
        .events(events.clone())
        .registry()
        .build()?;
    let worker = sagas.worker(WorkerOptions::default());
    let confirmed = SagaEvent::new(
        "PaymentConfirmed",
        &PaymentConfirmed {
            reference: "PAY-1".to_owned(),
        },
    )?;

    // To completion: `reserve`, `PAY`, a wait for `PaymentConfirmed`, then `ship`.
    let shipped = sagas.start(checkout("1 Main St")).await?;
    worker.run_until_idle().await?;
    let waiting = sagas.status(shipped).await?;
    assert_eq!(waiting.status, SagaStatus::Waiting);
    assert_eq!(waiting.awaiting.as_deref(), Some("PaymentConfirmed"));
    sagas.handle_event(shipped, confirmed.clone()).await?;
    worker.run_until_idle().await?;
    let done = sagas.status(shipped).await?;
    assert_eq!(
        (done.name.as_str(), done.definition_version),
        ("Checkout", 2)
    );
    assert_eq!(done.status, SagaStatus::Completed);
    let steps: Vec<&str> = done.completed.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(steps, ["reserve", "PAY", "ship"]);
    assert_eq!(done.data["payment"], "PAY-1");
    let stream = StreamId::new(format!("Checkout-{shipped}"))?;
    let recorded = events.read_stream(&stream, 1, 10).await?;
    let [shipment] = recorded.as_slice() else {
        panic!("`ship` records one event, not {}", recorded.len())
    };
    let shipment = CheckoutEvent::from_payload(
        &shipment.event_type,
        shipment.schema_version,
        &shipment.data,
    )?;
    assert_eq!(
        shipment,
        CheckoutEvent::Shipped(Shipped {
            parcel: "parcel to 1 Main St".to_owned()
        })
    );

    // To compensation: `ship` fails permanently, so `PAY` and `reserve` are undone.
    let undone = sagas.start(checkout("")).await?;
    worker.run_until_idle().await?;
    sagas.handle_event(undone, confirmed).await?;
    worker.run_until_idle().await?;
    let undone = sagas.status(undone).await?;
    assert_eq!(undone.status, SagaStatus::Compensated);
    assert!(undone.completed.iter().all(|c| c.compensated));
    assert_eq!(undone.data["reserved"], false);
    assert!(undone.data["payment"].is_null());
    Ok(())
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime starts")
        .block_on(run())
        .expect("both sagas run to their end");
}

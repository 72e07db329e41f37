//! An inventory saga across two warehouses: take stock from the main warehouse, top up from
//! the overflow warehouse, then book the transfer truck. A flaky warehouse is retried with
//! backoff; when no truck is free, both reservations are given back, newest first.
//!
//! ```sh
//! cargo run --example inventory_saga
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run --example inventory_saga
//! ```

use dtx::saga::{SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions};
use examples::fulfillment::FakeService;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The warehouses and the trucks.
#[derive(Debug, Clone)]
struct Depots {
    main: FakeService,
    overflow: FakeService,
    trucks: FakeService,
}

fn depots(ctx: &StepContext) -> Result<Depots, StepError> {
    ctx.state::<Depots>()
        .ok_or_else(|| StepError::permanent("no depots"))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Restock {
    sku: String,
    from_main: u32,
    from_overflow: u32,
    trucks_available: bool,
    main_reservation: Option<String>,
    overflow_reservation: Option<String>,
    truck: Option<String>,
}

#[allow(
    clippy::unused_async,
    reason = "the fake services answer synchronously"
)]
#[dtx::saga(name = "Restock", max_retries = 4)]
impl Restock {
    #[step(compensate = return_to_main)]
    async fn take_from_main(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!("reserve {} x {}", self.from_main, self.sku);
        self.main_reservation = Some(depots(ctx)?.main.call(&ctx.idempotency_key(), &what)?);
        Ok(())
    }

    async fn return_to_main(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!(
            "give back {}",
            self.main_reservation.as_deref().unwrap_or("-")
        );
        depots(ctx)?.main.call(&ctx.idempotency_key(), &what)?;
        self.main_reservation = None;
        Ok(())
    }

    #[step(compensate = return_to_overflow)]
    async fn take_from_overflow(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!("reserve {} x {}", self.from_overflow, self.sku);
        self.overflow_reservation =
            Some(depots(ctx)?.overflow.call(&ctx.idempotency_key(), &what)?);
        Ok(())
    }

    async fn return_to_overflow(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!(
            "give back {}",
            self.overflow_reservation.as_deref().unwrap_or("-")
        );
        depots(ctx)?.overflow.call(&ctx.idempotency_key(), &what)?;
        self.overflow_reservation = None;
        Ok(())
    }

    #[step]
    async fn book_truck(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        if !self.trucks_available {
            println!("   [trucks] no truck free today");
            return Err(StepError::permanent("no truck available"));
        }
        self.truck = Some(
            depots(ctx)?
                .trucks
                .call(&ctx.idempotency_key(), "book a truck")?,
        );
        Ok(())
    }
}

async fn settle(
    sagas: &SagaOrchestrator,
    id: uuid::Uuid,
) -> Result<(), Box<dyn std::error::Error>> {
    let worker = sagas.worker(WorkerOptions::default());
    loop {
        worker.run_until_idle().await?;
        let saga = sagas.status(id).await?;
        if saga.status.is_finished() {
            println!(
                "   -> {} {}",
                saga.status,
                saga.last_error
                    .map(|e| format!("({e})"))
                    .unwrap_or_default()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = examples::backend_from_env().await?;
    println!("inventory_saga on the {} stores\n", backend.name);
    let depots = Depots {
        main: FakeService::new("main"),
        overflow: FakeService::new("overflow"),
        trucks: FakeService::new("trucks"),
    };
    let sagas = SagaOrchestrator::builder(backend.sagas)
        .events(backend.events)
        .state(depots.clone())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .registry()
        .build()?;

    println!("1. restock 30 keyboards; the overflow warehouse drops the first two calls");
    depots.overflow.fail_next(2);
    let restock = |trucks_available| Restock {
        sku: "SKU-KEYBOARD".into(),
        from_main: 20,
        from_overflow: 10,
        trucks_available,
        ..Restock::default()
    };
    let id = sagas.start(restock(true)).await?;
    settle(&sagas, id).await?;
    assert_eq!(sagas.status(id).await?.status, SagaStatus::Completed);

    println!(
        "2. restock again on a day without trucks: both reservations are given back, newest first"
    );
    let id = sagas.start(restock(false)).await?;
    settle(&sagas, id).await?;
    assert_eq!(sagas.status(id).await?.status, SagaStatus::Compensated);

    println!(
        "\n{} operations at the main warehouse, {} at the overflow, {} trucks booked",
        depots.main.performed(),
        depots.overflow.performed(),
        depots.trucks.performed()
    );
    Ok(())
}

//! Payment processing with an awaited event: authorize a card, then wait for the payment
//! provider's `PaymentCaptured` webhook (delivered with `handle_event`) before issuing the
//! receipt. When the webhook does not come in time, the authorization is voided.
//!
//! ```sh
//! cargo run --example payment_processing
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run --example payment_processing
//! ```

use dtx::saga::{SagaEvent, SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions};
use examples::fulfillment::FakeService;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the provider's webhook carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentCaptured {
    capture_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Payment {
    amount_cents: u64,
    authorization: Option<String>,
    capture: Option<String>,
    receipt: Option<String>,
}

fn provider(ctx: &StepContext) -> Result<FakeService, StepError> {
    ctx.state::<FakeService>()
        .ok_or_else(|| StepError::permanent("no provider"))
}

#[allow(
    clippy::unused_async,
    reason = "the fake services answer synchronously"
)]
#[dtx::saga(name = "PaymentProcessing")]
impl Payment {
    #[step(compensate = void, await_event = "PaymentCaptured", await_timeout_secs = 2)]
    async fn authorize(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!(
            "authorize {}.{:02}",
            self.amount_cents / 100,
            self.amount_cents % 100
        );
        self.authorization = Some(provider(ctx)?.call(&ctx.idempotency_key(), &what)?);
        Ok(())
    }

    async fn void(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!("void {}", self.authorization.as_deref().unwrap_or("-"));
        provider(ctx)?.call(&ctx.idempotency_key(), &what)?;
        self.authorization = None;
        Ok(())
    }

    #[step]
    async fn issue_receipt(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let captured: PaymentCaptured = ctx
            .event("PaymentCaptured")
            .ok_or_else(|| StepError::permanent("no capture"))??;
        println!("   [receipts] receipt for capture {}", captured.capture_id);
        self.receipt = Some(format!("RCPT-{}", captured.capture_id));
        self.capture = Some(captured.capture_id);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = examples::backend_from_env().await?;
    println!("payment_processing on the {} stores\n", backend.name);
    let sagas = SagaOrchestrator::builder(backend.sagas)
        .events(backend.events)
        .state(FakeService::new("provider"))
        .registry()
        .build()?;
    // A background worker, as a service would run one.
    let worker = sagas.worker(WorkerOptions {
        poll_interval: Duration::from_millis(50),
        ..WorkerOptions::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running =
        tokio::spawn(async move { worker.run(async { stopped.await.unwrap_or(()) }).await });

    println!("1. a payment whose capture webhook arrives");
    let paid = sagas
        .start(Payment {
            amount_cents: 4_200,
            ..Payment::default()
        })
        .await?;
    wait_for(&sagas, paid, SagaStatus::Waiting).await?;
    println!(
        "   waiting for {:?}",
        sagas.status(paid).await?.awaiting.unwrap_or_default()
    );
    let webhook = SagaEvent::new(
        "PaymentCaptured",
        &PaymentCaptured {
            capture_id: "CAP-77".into(),
        },
    )?;
    sagas.handle_event(paid, webhook.clone()).await?;
    wait_for(&sagas, paid, SagaStatus::Completed).await?;
    println!(
        "   -> completed, receipt {}",
        sagas.status(paid).await?.data["receipt"]
    );

    println!("2. a payment whose webhook never arrives: after 2 s the authorization is voided");
    let abandoned = sagas
        .start(Payment {
            amount_cents: 990,
            ..Payment::default()
        })
        .await?;
    wait_for(&sagas, abandoned, SagaStatus::Compensated).await?;
    println!(
        "   -> compensated ({})",
        sagas
            .status(abandoned)
            .await?
            .last_error
            .unwrap_or_default()
    );

    println!("3. a webhook for a finished saga is refused with a typed error");
    match sagas.handle_event(abandoned, webhook).await {
        Err(error) => println!("   {error}"),
        Ok(()) => return Err("a finished saga accepted an event".into()),
    }

    let _ = stop.send(());
    running.await??;
    Ok(())
}

async fn wait_for(
    sagas: &SagaOrchestrator,
    id: uuid::Uuid,
    status: SagaStatus,
) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..200 {
        if sagas.status(id).await?.status == status {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("saga {id} did not become {status}").into())
}

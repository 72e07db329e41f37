//! Order to cash, step by step: place an order through the command bus (validated, concurrent,
//! under an invariant), confirm it, fulfil it with a saga (reserve inventory, charge payment,
//! create shipment — and a second order whose shipment fails, so payment and inventory are
//! compensated), read it through the cached query bus (from the aggregate, and from a read model
//! a projection keeps up to date), and follow the global feed.
//!
//! Runs in memory by default; set `DATABASE_URL` to run the same code on PostgreSQL.
//!
//! ```sh
//! cargo run --example order_to_cash
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run --example order_to_cash
//! ```

use dtx::cqrs::{CommandBus, CommandError, CommandMetadata, Committed, QueryBus, QueryOptions};
use dtx::projection::ProjectionRunner;
use dtx::saga::{SagaOrchestrator, SagaStatus, WorkerOptions};
use dtx::{Error, GlobalPosition};
use examples::fulfillment::{Fulfillment, Services};
use examples::order::{
    AddLine, ConfirmOrder, GetOrderSummary, Line, MAX_LINES, OrderId, OrderSummary, PlaceOrder,
};
use examples::order_summaries::GetOrderSummaryView;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error>;

fn line(sku: &str, quantity: u32, unit_price_cents: u64) -> Line {
    Line {
        sku: sku.to_owned(),
        quantity,
        unit_price_cents,
    }
}

#[tokio::main]
#[allow(
    clippy::too_many_lines,
    reason = "the example reads top to bottom, one step after another"
)]
async fn main() -> Result<(), BoxError> {
    let backend = examples::backend_from_env().await?;
    let store = backend.events.clone();
    println!("order_to_cash on the {} stores\n", backend.name);
    // Every #[command_handler] and #[query_handler] linked into this binary, found by type.
    let commands = CommandBus::builder()
        .store(store.clone())
        .config(dtx::DtxConfig::from_env()?)
        .registry()
        .require::<PlaceOrder>()
        .build()?;
    let queries = QueryBus::builder()
        .state(store.clone())
        .state(backend.order_summaries.clone())
        .registry()
        .build()?;
    // The order-summary read model follows the feed in the background; after each batch it
    // commits, the cached answers of the orders it changed are dropped.
    let projections = ProjectionRunner::new(store.clone(), backend.checkpoints.clone())
        .projection(backend.order_summaries.clone())
        .invalidating(queries.clone())
        .start()?;
    let order_id = OrderId::new();
    // One correlation id for the whole business operation.
    let operation = CommandMetadata::new();
    let meta = || CommandMetadata::correlated(operation.correlation_id);

    println!("1. place order {order_id} for customer C-42");
    let placed: Committed = commands
        .execute_with(
            PlaceOrder {
                order_id,
                customer: "C-42".into(),
            },
            meta(),
        )
        .await?;
    println!(
        "   stored in stream {} at version {}",
        placed.stream, placed.version
    );

    println!("2. add two lines");
    for l in [line("SKU-KEYBOARD", 1, 8_900), line("SKU-CABLE", 3, 1_250)] {
        let added: Committed = commands
            .execute_with(AddLine { order_id, line: l }, meta())
            .await?;
        println!("   line stored at version {}", added.version);
    }

    println!("3. an invalid line is refused before its handler runs, every broken rule listed");
    match commands
        .execute_with(
            AddLine {
                order_id,
                line: line(" ", 0, 100),
            },
            meta(),
        )
        .await
    {
        Err(CommandError::Invalid { errors, .. }) => println!("   refused: {errors}"),
        other => return Err(format!("expected a validation error, got {other:?}").into()),
    }

    println!("4. eight clerks add a line at the same moment; conflicts are retried");
    let clerks: Vec<_> = (0..8)
        .map(|n| {
            let commands = commands.clone();
            let cmd = AddLine {
                order_id,
                line: line(&format!("SKU-CLERK-{n}"), 1, 500),
            };
            let metadata = meta();
            tokio::spawn(async move { commands.execute_with(cmd, metadata).await })
        })
        .collect();
    let mut attempts = 0;
    for clerk in clerks {
        attempts += clerk.await??.attempts;
    }
    println!("   all 8 lines stored, in {attempts} attempts in all");

    println!("5. an invariant refuses events that would break it (at most {MAX_LINES} lines)");
    let mut n = 0;
    let refused = loop {
        n += 1;
        let cmd = AddLine {
            order_id,
            line: line(&format!("SKU-BULK-{n}"), 1, 10),
        };
        match commands.execute_with(cmd, meta()).await {
            Ok(_) => {}
            Err(CommandError::Dtx(Error::Invariant { violation, .. })) => break violation,
            Err(other) => return Err(other.into()),
        }
    };
    println!("   line {} refused: {refused}; nothing stored", 10 + n);

    println!("6. confirm the order");
    let confirmed: Committed = commands
        .execute_with(ConfirmOrder { order_id }, meta())
        .await?;
    println!("   confirmed at version {}", confirmed.version);
    match commands
        .execute_with(ConfirmOrder { order_id }, meta())
        .await
    {
        Err(e) if e.domain::<examples::order::OrderError>().is_some() => {
            println!("   confirming twice is refused by the aggregate: {e}");
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    println!("7. fulfil it with a saga: reserve inventory, charge payment, create shipment");
    let services = Services::default();
    let sagas = SagaOrchestrator::builder(backend.sagas.clone())
        .events(store.clone())
        .state(services.clone())
        .registry()
        .build()?;
    let worker = sagas.worker(WorkerOptions::default());
    services.payments.fail_next(1);
    let fulfil = |order_id, address: &str| Fulfillment {
        order_id,
        total_cents: 16_750,
        address: address.to_owned(),
        ..Fulfillment::default()
    };
    let shipped = sagas
        .start_correlated(
            fulfil(order_id, "1 Main Street"),
            Some(operation.correlation_id),
        )
        .await?;
    worker.run_until_idle().await?;
    // The payment failed once: its retry is due after a short backoff.
    while sagas.status(shipped).await?.status == SagaStatus::Running {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        worker.run_until_idle().await?;
    }
    let saga = sagas.status(shipped).await?;
    println!(
        "   saga {}: {} (steps: {})",
        saga.id,
        saga.status,
        saga.completed
            .iter()
            .map(|c| c.step.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    println!(
        "8. a second order cannot be shipped: payment and inventory are compensated, in reverse order"
    );
    let doomed = sagas.start(fulfil(OrderId::new(), "nowhere")).await?;
    worker.run_until_idle().await?;
    let saga = sagas.status(doomed).await?;
    println!(
        "   saga {}: {} ({})",
        saga.id,
        saga.status,
        saga.last_error.unwrap_or_default()
    );

    println!("9. read the summary through the query bus (cached for 5 s)");
    let summary: OrderSummary = queries.execute(GetOrderSummary { order_id }).await?;
    let cached: OrderSummary = queries.execute(GetOrderSummary { order_id }).await?;
    println!(
        "   {:?}, {} lines, total {}.{:02}, version {} (second read from the cache: {})",
        summary.status,
        summary.lines,
        summary.total_cents / 100,
        summary.total_cents % 100,
        summary.version,
        summary == cached
    );
    assert_eq!(summary, cached);

    println!("   and from the order-summary read model, once the projection has caught up:");
    let view = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let view: Option<OrderSummary> = queries
                .execute_with(GetOrderSummaryView { order_id }, QueryOptions::uncached())
                .await?;
            match view {
                Some(view) if view.version >= summary.version => return Ok::<_, BoxError>(view),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .map_err(|_| "the projection did not catch up within 10 s")??;
    let cached: Option<OrderSummary> = queries.execute(GetOrderSummaryView { order_id }).await?;
    println!(
        "   {:?}, {} lines, total {}.{:02}, version {} (equal to the aggregate's: {})",
        view.status,
        view.lines,
        view.total_cents / 100,
        view.total_cents % 100,
        view.version,
        view == summary
    );
    assert_eq!(view, summary, "the read model agrees with the aggregate");
    assert_eq!(cached, Some(view));

    println!("10. the global feed, as a projection or the outbox would read it");
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 100).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page
            .iter()
            .filter(|e| e.metadata.correlation_id == Some(operation.correlation_id))
        {
            let cause = event
                .metadata
                .causation_id
                .map(|c| c.to_string())
                .unwrap_or_default();
            println!(
                "   {:>4} {:<15} v{:<3} caused by command {}",
                event.position.sequence,
                event.event_type,
                event.version,
                &cause[cause.len().saturating_sub(12)..]
            );
        }
    }
    projections.stop().await;
    println!("\ndone");
    Ok(())
}

//! Order to cash, step by step: place an order, add lines, confirm it; see optimistic
//! concurrency, an invariant refuse a command, a snapshot taken, and the global feed.
//!
//! Runs in memory by default; set `DATABASE_URL` to run the same code on PostgreSQL.
//!
//! ```sh
//! cargo run --example order_to_cash
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run --example order_to_cash
//! ```

use dtx::{Aggregate, DtxConfig, Error, EventMetadata, GlobalPosition, Repository, Uuid};
use examples::order::{Line, MAX_LINES, Order, OrderError, OrderId};

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
    let (store, backend) = examples::store_from_env().await?;
    println!("order_to_cash on the {backend} event store\n");
    let orders = Repository::<Order>::shared(store.clone(), &DtxConfig::from_env()?);
    let id = OrderId::new();
    let correlation = Uuid::now_v7();
    let metadata = EventMetadata::correlated(correlation);

    println!("1. place order {id} for customer C-42");
    let mut order = orders.load(&id).await?;
    order.handle(|o| o.place("C-42"))?;
    orders.save_with(&mut order, metadata.clone()).await?;
    println!(
        "   stored as stream {} at version {}",
        Order::stream_id(&id)?,
        order.version()
    );

    println!("2. add two lines");
    order.handle(|o| o.add_line(line("SKU-KEYBOARD", 1, 8_900)))?;
    order.handle(|o| o.add_line(line("SKU-CABLE", 3, 1_250)))?;
    let saved = orders.save_with(&mut order, metadata.clone()).await?;
    if let Some(saved) = saved {
        println!(
            "   one append stored versions {}..={}",
            saved.first_version, saved.last_version
        );
    }

    println!("3. a line with quantity 0 is refused by the command handler");
    match order.handle(|o| o.add_line(line("SKU-NOTHING", 0, 100))) {
        Err(dtx::aggregate::HandleError::Domain(OrderError::EmptyLine)) => {
            println!("   refused: quantity must be at least 1");
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    println!("4. two clerks edit the same order at once");
    let mut clerk_a = orders.load(&id).await?;
    let mut clerk_b = orders.load(&id).await?;
    clerk_a.handle(|o| o.add_line(line("SKU-MOUSE", 1, 2_900)))?;
    clerk_b.handle(|o| o.add_line(line("SKU-MAT", 1, 900)))?;
    orders.save_with(&mut clerk_a, metadata.clone()).await?;
    match orders.save_with(&mut clerk_b, metadata.clone()).await {
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            println!(
                "   clerk B lost the race: expected {expected}, stream is at version {actual}"
            );
            let mut retry = orders.load(&id).await?;
            retry.handle(|o| o.add_line(line("SKU-MAT", 1, 900)))?;
            orders.save_with(&mut retry, metadata.clone()).await?;
            println!(
                "   clerk B reloaded and retried: now at version {}",
                retry.version()
            );
        }
        other => return Err(format!("expected a version conflict, got {other:?}").into()),
    }

    println!(
        "5. an invariant refuses a command whose events would break it (max {MAX_LINES} lines)"
    );
    let mut order = orders.load(&id).await?;
    let before = order.version();
    let too_many: Vec<_> = (0..MAX_LINES)
        .map(|n| line(&format!("SKU-BULK-{n}"), 1, 10))
        .collect();
    let result = order.handle(|o| {
        too_many
            .iter()
            .cloned()
            .map(|l| o.add_line(l))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat())
    });
    match result {
        Err(dtx::aggregate::HandleError::Dtx(Error::Invariant { violation, .. })) => {
            println!("   refused: {violation}; nothing stored, still at version {before}");
        }
        other => return Err(format!("expected an invariant violation, got {other:?}").into()),
    }

    println!("6. confirm the order");
    order.handle(Order::confirm)?;
    orders.save_with(&mut order, metadata.clone()).await?;
    let order = orders.load(&id).await?;
    println!(
        "   {:?}, {} lines, total {}.{:02}, version {}",
        order.state().status,
        order.state().lines.len(),
        order.state().total_cents() / 100,
        order.state().total_cents() % 100,
        order.version()
    );
    let snapshot = store.load_snapshot(&Order::stream_id(&id)?).await?;
    if let Some(snapshot) = snapshot {
        println!(
            "   snapshot stored at version {} (every 5 events); loads replay only what follows",
            snapshot.version
        );
    }

    println!("7. the global feed, as a projection or the outbox would read it");
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 100).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page
            .iter()
            .filter(|e| e.metadata.correlation_id == Some(correlation))
        {
            println!(
                "   {:>3} {:<16} {} v{}",
                event.position.sequence, event.event_type, event.stream_id, event.version
            );
        }
    }
    println!("\ndone");
    Ok(())
}

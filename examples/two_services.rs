//! Two services in two processes, one business operation across them: an order service (HTTP
//! API behind the idempotency layer, command bus, fulfilment saga, outbox, inbox) and a payment
//! service (inbox consumer, its own aggregate and outbox), each with its own database, talking
//! through NATS `JetStream`. See `examples/src/two_services.rs` for the services.
//!
//! ```sh
//! cargo run --example two_services   # PostgreSQL (DATABASE_URL or 127.0.0.1:5432), NATS (NATS_URL or 127.0.0.1:4222)
//! cargo run --example two_services -- --kafka   # Kafka (KAFKA_BROKERS or 127.0.0.1:9092) instead of NATS
//! ```
//!
//! It runs itself three times: the driver (no argument) prepares the databases and the
//! streams, starts `two_services order` and `two_services payment` as processes, places a
//! small order (paid, shipped) and a large one (refused, compensated), prints what happened,
//! and exits 0 when both ended as expected.

use examples::two_services::{
    Failure, OrderClient, Shutdown, Transport, order_service, payment_service, prepare,
};
use std::time::Duration;
use uuid::Uuid;

/// Spans carry OpenTelemetry contexts (no exporter: the trace ids are what this example
/// shows), so `traceparent`s are stored on events and sagas and sent with messages.
fn init_tracing() -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("two_services");
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();
    provider
}

/// A shutdown signal for a service process: its stdin closing (the driver's way to stop it).
fn on_stdin_closed() -> Shutdown {
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
        let _ = stop.send(true);
    });
    shutdown
}

/// A service process, stopped by closing its stdin.
struct Service {
    child: tokio::process::Child,
}

impl Service {
    fn start(args: &[&str]) -> Result<Self, Failure> {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child })
    }

    async fn stop(mut self) -> Result<(), Failure> {
        drop(self.child.stdin.take());
        let Ok(status) = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
        else {
            self.child.kill().await?;
            return Err("a service did not stop within 30 s".into());
        };
        let status = status?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("a service exited with {status}").into())
        }
    }
}

async fn drive(kafka: bool) -> Result<(), Failure> {
    let (orders_db, payments_db, transport) = prepare(
        if kafka {
            "dtx_two_services_kafka"
        } else {
            "dtx_two_services"
        },
        kafka,
    )
    .await?;
    println!(
        "two_services: an order service and a payment service, on PostgreSQL and {transport}\n"
    );
    println!("1. fresh databases for both services, fresh streams or topics for both outboxes");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    println!("2. starting both services, two processes");
    let port_arg = port.to_string();
    let mut order_args = vec!["order", &orders_db, &port_arg];
    let mut payment_args = vec!["payment", &payments_db];
    let transport_args = transport.args();
    order_args.extend(transport_args.iter().map(String::as_str));
    payment_args.extend(transport_args.iter().map(String::as_str));
    let orders = Service::start(&order_args)?;
    let payments = Service::start(&payment_args)?;
    let http = OrderClient::new(port);
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while !http.ready().await {
        if tokio::time::Instant::now() > deadline {
            return Err("the order service did not answer within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (poll, limit) = (Duration::from_millis(100), Duration::from_mins(2));

    println!("\n3. an order of 42.00: paid, shipped");
    let key = Uuid::now_v7().to_string();
    let small = http.place(&key, "ada", 4_200).await?;
    println!("   <- {} {}", small.status, small.body);
    let again = http.place(&key, "ada", 4_200).await?;
    println!(
        "   the same request again (same Idempotency-Key): {}, replayed: {}, same answer: {}",
        again.status,
        again.replayed,
        again.body == small.body
    );
    let small_saga = http
        .finished(
            small.body["saga_id"].as_str().unwrap_or_default(),
            poll,
            limit,
        )
        .await?;
    println!(
        "   -> saga {}, shipment {}",
        small_saga["status"], small_saga["data"]["shipment"]
    );

    println!("\n4. an order of 2500.00: refused by the payment service, compensated");
    let large = http
        .place(&Uuid::now_v7().to_string(), "grace", 250_000)
        .await?;
    println!("   <- {} {}", large.status, large.body);
    let large_saga = http
        .finished(
            large.body["saga_id"].as_str().unwrap_or_default(),
            poll,
            limit,
        )
        .await?;
    println!(
        "   -> saga {} ({})",
        large_saga["status"], large_saga["last_error"]
    );

    println!("\n5. stopping both services");
    orders.stop().await?;
    payments.stop().await?;
    if small_saga["status"] != "completed"
        || large_saga["status"] != "compensated"
        || !again.replayed
        || again.body != small.body
    {
        return Err("the orders did not end as expected".into());
    }
    println!("\ndone: one order completed, one compensated");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: two_services [--kafka] | order DATABASE_URL PORT TRANSPORT.. | payment DATABASE_URL TRANSPORT..";
    match args.first().map(String::as_str) {
        None => drive(false).await,
        Some("--kafka") => drive(true).await,
        Some("order") => {
            let _tracing = init_tracing();
            let (Some(url), Some(port), Some(transport)) = (
                args.get(1),
                args.get(2).and_then(|p| p.parse::<u16>().ok()),
                Transport::from_args(args.get(3..).unwrap_or_default()),
            ) else {
                return Err(usage.into());
            };
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            order_service(url, &transport, listener, on_stdin_closed()).await
        }
        Some("payment") => {
            let _tracing = init_tracing();
            let (Some(url), Some(transport)) = (
                args.get(1),
                Transport::from_args(args.get(2..).unwrap_or_default()),
            ) else {
                return Err(usage.into());
            };
            payment_service(url, &transport, on_stdin_closed()).await
        }
        Some(_) => Err(usage.into()),
    }
}

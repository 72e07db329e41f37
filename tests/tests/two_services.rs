//! The two-services example runs as its README says: one command, two service processes on
//! PostgreSQL and NATS, one order completed and one compensated, and each request's trace
//! followed across both services.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The example's binary, which `cargo test` builds with the workspace's examples
/// (`target/<profile>/examples/two_services`, beside this test's `deps` directory).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let example = profile
        .join("examples")
        .join(format!("two_services{}", std::env::consts::EXE_SUFFIX));
    assert!(
        example.exists(),
        "{} is missing: build it with `cargo build -p examples --example two_services` (cargo test builds it)",
        example.display()
    );
    example
}

#[tokio::test]
async fn the_two_services_example_completes_one_order_and_compensates_the_other() {
    check_run(&[]).await;
}

/// The same with `--kafka`: both services' outboxes and inboxes on Kafka topics.
#[tokio::test]
async fn the_two_services_example_runs_on_kafka_too() {
    check_run(&["--kafka"]).await;
}

/// Runs the example with `args` and checks what it printed.
async fn check_run(args: &[&str]) {
    let mut command = std::process::Command::new(example());
    command.args(args);
    command.env("DATABASE_URL", dtx_postgres::testing::database_url());
    let run = tokio::task::spawn_blocking(move || command.output());
    let output = tokio::time::timeout(Duration::from_mins(10), run)
        .await
        .expect("the example finishes within 10 minutes")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("saga \"completed\", shipment \"SHIP-"),
        "{stdout}"
    );
    assert!(stdout.contains("saga \"compensated\""), "{stdout}");
    assert!(
        stdout.contains("replayed: true, same answer: true"),
        "{stdout}"
    );
    assert!(
        stdout.contains("compensating, stock released"),
        "the refused order's stock is released: {stdout}"
    );

    // Every line about one order names the same trace, in both services: the request's
    // trace goes through the saga, the outbox, NATS, the payment service's inbox, its
    // events, and back through the order service's inbox.
    let mut traces: BTreeMap<String, BTreeMap<&str, String>> = BTreeMap::new();
    for line in stdout.lines() {
        let (Some(order), Some(trace)) = (
            line.split("order ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next()),
            line.split("trace ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next()),
        ) else {
            continue;
        };
        let service = if line.contains("[payments]") {
            "payments"
        } else {
            "orders"
        };
        let order = order.trim_end_matches([',', ':']).to_owned();
        let seen = traces.entry(order).or_default();
        if let Some(before) = seen.insert(service, trace.trim_end_matches(')').to_owned()) {
            assert_eq!(
                before, seen[service],
                "one trace per order and service: {stdout}"
            );
        }
    }
    assert_eq!(traces.len(), 2, "two orders traced: {traces:?}\n{stdout}");
    for (order, by_service) in &traces {
        assert_eq!(
            by_service.len(),
            2,
            "order {order} traced in both services: {by_service:?}"
        );
        assert_eq!(
            by_service["orders"], by_service["payments"],
            "order {order}: one trace across both services"
        );
        assert_ne!(by_service["orders"], "-", "order {order} has a trace");
    }
}

//! `dtx::telemetry::init()` exports spans over OTLP/HTTP to a real receiver: a small axum
//! server started by the test decodes every `ExportTraceServiceRequest` it is sent.
//!
//! `init()` reads the `OTEL_*` variables and installs the process's global subscriber, so the
//! exporting side runs in a child process (this binary again, with the variables set), and the
//! test keeps the receiver.

#![allow(clippy::unwrap_used, reason = "tests")]

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use dtx::cqrs::{CommandBus, Committed};
use examples::order::{OrderId, PlaceOrder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use std::sync::{Arc, Mutex};

/// What the receiver got: (service name, span name) pairs.
type Received = Arc<Mutex<Vec<(String, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver() {
    let received = Received::default();
    let sink = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut sink = sink.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.push((service.clone(), span.name));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let endpoint = format!("http://{address}");
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "export_child", "--ignored", "--nocapture"])
            .env("DTX_OTLP_CHILD", "1")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "dtx-otlp-test")
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("RUST_LOG", "off,dtx=debug,telemetry_otlp=info")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        child.status.success(),
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );

    let received = received.lock().unwrap();
    let names: Vec<&str> = received.iter().map(|(_, n)| n.as_str()).collect();
    assert!(names.contains(&"dtx.command"), "{received:?}");
    assert!(names.contains(&"dtx.command.handle"), "{received:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "export.traced").count(),
        3,
        "{received:?}"
    );
    assert!(
        received
            .iter()
            .all(|(service, _)| service.contains("dtx-otlp-test")),
        "{received:?}"
    );
}

#[dtx::trace(name = "export.traced", fields(n))]
fn traced(n: u32) -> Result<u32, String> {
    if n == 2 { Err("two".to_owned()) } else { Ok(n) }
}

/// The exporting side, run by `spans_reach_an_otlp_receiver` in a child process.
#[tokio::test]
#[ignore = "run by spans_reach_an_otlp_receiver with the OTEL_* variables set"]
async fn export_child() {
    if std::env::var_os("DTX_OTLP_CHILD").is_none() {
        return;
    }
    let guard = dtx::telemetry::init().unwrap();
    for n in 1..=3 {
        let _ = traced(n);
    }
    let bus = CommandBus::builder().registry().build().unwrap();
    let _: Committed = bus
        .execute(PlaceOrder {
            order_id: OrderId::new(),
            customer: "c".into(),
        })
        .await
        .unwrap();
    // Dropping the guard flushes the batch to the receiver before the process ends.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}

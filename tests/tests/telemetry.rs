//! OpenTelemetry export of dtx's spans and metrics (feature `otel`), checked with the SDK's
//! in-memory exporters: one trace from the caller's span through command dispatch, handling,
//! the stored events, a saga's steps and the outbox publishing the step's event; the metrics
//! with their values; `#[dtx::trace]`.
//!
//! A test binary of its own: it installs the global subscriber and meter provider, and the
//! tests share them (each uses its own command, aggregate, saga and function names).

#![allow(
    clippy::unwrap_used,
    clippy::unused_async,
    clippy::too_many_lines,
    missing_docs,
    reason = "tests"
)]

use dtx::cqrs::{CommandBus, CommandMetadata, Committed};
use dtx::saga::{
    MemorySagaStore, SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions,
};
use dtx::{Aggregate, Apply, DomainEvent, Id, MemoryEventStore, Repository, SharedEventStore};
use examples::order::{AddLine, Line, Order, OrderId, PlaceOrder};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

struct Telemetry {
    spans: InMemorySpanExporter,
    tracer: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter: SdkMeterProvider,
}

/// The global subscriber (spans to the in-memory exporter) and meter provider, installed once.
fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let tracer = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(meter.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        Telemetry {
            spans,
            tracer,
            metrics,
            meter,
        }
    })
}

fn finished_spans() -> Vec<SpanData> {
    let t = telemetry();
    t.tracer.force_flush().unwrap();
    t.spans.get_finished_spans().unwrap()
}

fn latest_metrics() -> ResourceMetrics {
    let t = telemetry();
    t.meter.force_flush().unwrap();
    t.metrics.get_finished_metrics().unwrap().pop().unwrap()
}

fn has(attributes: &[KeyValue], key: &str, value: &str) -> bool {
    attributes
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

/// The metric `name`, if recorded.
fn metric<'a>(metrics: &'a ResourceMetrics, name: &str) -> Option<&'a AggregatedMetrics> {
    metrics
        .scope_metrics()
        .flat_map(opentelemetry_sdk::metrics::data::ScopeMetrics::metrics)
        .find(|m| m.name() == name)
        .map(opentelemetry_sdk::metrics::data::Metric::data)
}

/// The value of counter `name` at the data points whose attributes include all of `labels`.
fn counter(metrics: &ResourceMetrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    match metric(metrics, name) {
        None => 0,
        Some(AggregatedMetrics::U64(MetricData::Sum(sum))) => sum
            .data_points()
            .filter(|p| {
                let attributes: Vec<KeyValue> = p.attributes().cloned().collect();
                labels.iter().all(|(k, v)| has(&attributes, k, v))
            })
            .map(opentelemetry_sdk::metrics::data::SumDataPoint::value)
            .sum(),
        Some(_) => panic!("{name} is not a u64 counter"),
    }
}

/// `(count, sum)` of histogram `name` at the data points matching `labels`.
fn histogram(metrics: &ResourceMetrics, name: &str, labels: &[(&str, &str)]) -> (u64, f64) {
    let matches = |attributes: Vec<KeyValue>| labels.iter().all(|(k, v)| has(&attributes, k, v));
    match metric(metrics, name) {
        None => (0, 0.0),
        Some(AggregatedMetrics::U64(MetricData::Histogram(h))) => h
            .data_points()
            .filter(|p| matches(p.attributes().cloned().collect()))
            .fold((0, 0.0), |(c, s), p| {
                #[allow(clippy::cast_precision_loss, reason = "small test values")]
                (c + p.count(), s + p.sum() as f64)
            }),
        Some(AggregatedMetrics::F64(MetricData::Histogram(h))) => h
            .data_points()
            .filter(|p| matches(p.attributes().cloned().collect()))
            .fold((0, 0.0), |(c, s), p| (c + p.count(), s + p.sum())),
        Some(_) => panic!("{name} is not a histogram"),
    }
}

fn traceparent_of(span: &SpanData) -> String {
    format!(
        "00-{}-{}-01",
        span.span_context.trace_id(),
        span.span_context.span_id()
    )
}

// ---------------------------------------------------------------------------------------------
// A saga started inside the command's trace, with a step that fails once and records an event.

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shipped {
    pub parcels: u32,
}

#[derive(Debug, Clone, DomainEvent)]
pub enum ShipmentEvent {
    Shipped(Shipped),
}

static SHIP_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TracedShipment {
    parcels: u32,
}

#[dtx::saga(name = "TracedShipment", max_retries = 3)]
impl TracedShipment {
    #[step]
    async fn ship(&mut self, ctx: &StepContext) -> Result<ShipmentEvent, StepError> {
        let _ = ctx;
        if SHIP_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(StepError::transient("carrier busy"));
        }
        self.parcels += 1;
        Ok(ShipmentEvent::Shipped(Shipped {
            parcels: self.parcels,
        }))
    }
}

#[tokio::test]
async fn one_operation_is_one_trace_with_its_metrics() {
    telemetry();
    let outbox = dtx::outbox::MemoryOutbox::new();
    let store: SharedEventStore = Arc::new(MemoryEventStore::new().with_outbox(outbox.clone()));
    let bus = CommandBus::builder()
        .store(Arc::clone(&store))
        .registry()
        .build()
        .unwrap();
    let sagas = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
        .events(Arc::clone(&store))
        .backoff(Duration::ZERO, Duration::ZERO)
        .registry()
        .build()
        .unwrap();
    let order_id = OrderId::new();

    // The caller's operation: a request span around two commands and the saga's start.
    let request = tracing::info_span!("http.request");
    let saga_id = async {
        let _: Committed = bus
            .execute(PlaceOrder {
                order_id,
                customer: "c".into(),
            })
            .await
            .unwrap();
        let line = Line {
            sku: "s".into(),
            quantity: 1,
            unit_price_cents: 1,
        };
        let _: Committed = bus
            .execute_with(
                AddLine {
                    order_id,
                    line: line.clone(),
                },
                CommandMetadata::new(),
            )
            .await
            .unwrap();
        let missing = bus
            .execute(AddLine {
                order_id: OrderId::new(),
                line,
            })
            .await;
        assert!(missing.is_err());
        sagas.start(TracedShipment::default()).await.unwrap()
    }
    .instrument(request.clone())
    .await;
    drop(request);

    // The worker runs outside of any span, later: the step continues the trace anyway.
    let worker = sagas.worker(WorkerOptions::default());
    worker.run_until_idle().await.unwrap();
    assert_eq!(
        sagas.status(saga_id).await.unwrap().status,
        SagaStatus::Completed
    );

    let spans = finished_spans();
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let request = named("http.request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    let trace: TraceId = request.span_context.trace_id();

    let commands: Vec<_> = named("dtx.command")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(commands.len(), 3, "{spans:#?}");
    for command in &commands {
        assert_eq!(command.parent_span_id, request.span_context.span_id());
    }
    let command_ids: Vec<SpanId> = commands.iter().map(|s| s.span_context.span_id()).collect();
    let handles: Vec<_> = named("dtx.command.handle")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert!(handles.len() >= 2, "{spans:#?}");
    assert!(
        handles
            .iter()
            .all(|h| command_ids.contains(&h.parent_span_id)),
        "every handling span is a child of a dispatch span"
    );

    // The events carry the traceparent of the span that produced them: the handling span.
    let stream = Order::stream_id(&order_id).unwrap();
    let events = store.read_stream(&stream, 1, 100).await.unwrap();
    assert_eq!(events.len(), 2);
    let handle_parents: Vec<String> = handles.iter().map(|h| traceparent_of(h)).collect();
    for event in &events {
        let traceparent = event.metadata.traceparent.as_deref().unwrap();
        assert!(dtx::telemetry::is_traceparent(traceparent));
        assert!(
            handle_parents.iter().any(|p| p == traceparent),
            "{traceparent} is one of the handling spans {handle_parents:?}"
        );
    }

    // The saga's steps (the failed attempt and the retry) continue the request's trace.
    let steps = named("dtx.saga.step");
    assert_eq!(steps.len(), 2, "{spans:#?}");
    for step in &steps {
        assert_eq!(step.span_context.trace_id(), trace);
        assert_eq!(step.parent_span_id, request.span_context.span_id());
    }
    let step_events = store
        .read_stream(
            &dtx::StreamId::new(format!("TracedShipment-{saga_id}")).unwrap(),
            1,
            10,
        )
        .await
        .unwrap();
    assert_eq!(step_events.len(), 1);
    assert!(
        step_events[0]
            .metadata
            .traceparent
            .as_deref()
            .unwrap()
            .contains(&trace.to_string())
    );

    // The outbox publishes the step's event (and the orders' events) in the same trace: each
    // publish span is a child of the span that wrote the message.
    let publisher = dtx::outbox::MemoryPublisher::new();
    let sent = outbox
        .publish_pending(&publisher, &dtx::outbox::RelayOptions::default())
        .await;
    assert_eq!(sent, 3, "two order events and the step's event");
    let spans = finished_spans();
    let step_spans: Vec<&SpanData> = spans.iter().filter(|s| s.name == "dtx.saga.step").collect();
    let publish_spans: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "dtx.outbox.publish" && s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(publish_spans.len(), 3, "{spans:#?}");
    let step_ids: Vec<SpanId> = step_spans
        .iter()
        .map(|s| s.span_context.span_id())
        .collect();
    assert!(
        publish_spans
            .iter()
            .any(|p| step_ids.contains(&p.parent_span_id)),
        "the step's event is published under the step's span"
    );
    let handle_ids: Vec<SpanId> = handles.iter().map(|h| h.span_context.span_id()).collect();
    assert_eq!(
        publish_spans
            .iter()
            .filter(|p| handle_ids.contains(&p.parent_span_id))
            .count(),
        2,
        "the orders' events are published under their handling spans"
    );

    // Metrics.
    let metrics = latest_metrics();
    assert_eq!(histogram(&metrics, "dtx.outbox.lag", &[]).0, 3);
    let place = std::any::type_name::<PlaceOrder>();
    let add = std::any::type_name::<AddLine>();
    assert_eq!(
        counter(&metrics, "dtx.commands.executed", &[("command", place)]),
        1
    );
    assert_eq!(
        counter(&metrics, "dtx.commands.executed", &[("command", add)]),
        2
    );
    assert_eq!(
        counter(&metrics, "dtx.commands.failed", &[("command", place)]),
        0
    );
    assert_eq!(
        counter(
            &metrics,
            "dtx.commands.failed",
            &[("command", add), ("outcome", "not_applicable")]
        ),
        1
    );
    assert_eq!(
        histogram(&metrics, "dtx.command.duration", &[("command", add)]).0,
        2
    );
    assert_eq!(
        histogram(&metrics, "dtx.append.batch_size", &[("aggregate", "Order")]),
        (2, 2.0)
    );
    assert_eq!(
        histogram(&metrics, "dtx.append.duration", &[("aggregate", "Order")]).0,
        2
    );
    for (status, n) in [("running", 1), ("completed", 1), ("compensating", 0)] {
        assert_eq!(
            counter(
                &metrics,
                "dtx.saga.transitions",
                &[("saga", "TracedShipment"), ("status", status)]
            ),
            n,
            "{status}"
        );
    }
    assert_eq!(
        counter(
            &metrics,
            "dtx.saga.step.retries",
            &[("saga", "TracedShipment"), ("step", "ship")]
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Version conflicts.

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, DomainEvent)]
pub enum TracedAccountEvent {
    Deposited(Deposited),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TracedAccountEvent)]
pub struct TracedAccount {
    id: Id<TracedAccount>,
    balance: u64,
}

impl Apply<Deposited> for TracedAccount {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

#[tokio::test]
async fn version_conflicts_and_batch_sizes_are_counted() {
    telemetry();
    let accounts = Repository::<TracedAccount>::new(MemoryEventStore::new());
    let id = Id::<TracedAccount>::new();
    let mut first = accounts.load(&id).await.unwrap();
    let mut second = accounts.load(&id).await.unwrap();
    first
        .record([
            Deposited { amount: 1 },
            Deposited { amount: 2 },
            Deposited { amount: 3 },
        ])
        .unwrap();
    accounts.save(&mut first).await.unwrap();
    second.record([Deposited { amount: 4 }]).unwrap();
    assert!(matches!(
        accounts.save(&mut second).await,
        Err(dtx::Error::Conflict { .. })
    ));

    let metrics = latest_metrics();
    let account = [("aggregate", "TracedAccount")];
    assert_eq!(counter(&metrics, "dtx.append.conflicts", &account), 1);
    assert_eq!(
        histogram(&metrics, "dtx.append.batch_size", &account),
        (1, 3.0)
    );
}

// ---------------------------------------------------------------------------------------------
// `#[dtx::trace]`.

#[derive(Debug)]
pub struct Card {
    pub number: String,
}

#[derive(Debug, thiserror::Error)]
#[error("card {0} declined")]
pub struct Declined(u64);

#[dtx::trace(name = "payments.charge", fields(order))]
async fn charge(order: u64, card: &Card) -> Result<u64, Declined> {
    let _ = &card.number;
    if order == 0 {
        return Err(Declined(order));
    }
    Ok(order)
}

struct Pricing;

impl Pricing {
    #[dtx::trace(fields(sku))]
    fn price(&self, sku: &str, secret: &str) -> Result<u64, String> {
        let _ = secret;
        sku.parse().map_err(|_| format!("no price for {sku}"))
    }
}

#[tokio::test]
async fn traced_functions_record_listed_fields_errors_and_metrics() {
    telemetry();
    let card = Card {
        number: "4242 4242 4242 4242".into(),
    };
    assert_eq!(charge(7, &card).await.unwrap(), 7);
    assert!(charge(0, &card).await.is_err());
    assert_eq!(Pricing.price("12", "hunter2").unwrap(), 12);
    assert!(Pricing.price("x", "hunter2").is_err());

    let spans = finished_spans();
    let charges: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "payments.charge")
        .collect();
    assert_eq!(charges.len(), 2, "{spans:#?}");
    let failed = charges
        .iter()
        .find(|s| has(&s.attributes, "order", "0"))
        .unwrap();
    assert_eq!(
        failed.status,
        opentelemetry::trace::Status::error("card 0 declined")
    );
    assert!(
        failed
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "error" && kv.value == Value::Bool(true)),
        "{failed:#?}"
    );
    let ok = charges
        .iter()
        .find(|s| has(&s.attributes, "order", "7"))
        .unwrap();
    assert_eq!(ok.status, opentelemetry::trace::Status::Unset);
    for span in spans
        .iter()
        .filter(|s| s.name == "payments.charge" || s.name == "price")
    {
        assert!(
            span.attributes
                .iter()
                .all(|kv| !kv.key.as_str().contains("card") && !kv.key.as_str().contains("secret")),
            "unlisted arguments are not recorded: {span:#?}"
        );
        // The values, not the whole span: its random ids may contain any digits.
        let values = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
            .map(|kv| kv.value.to_string());
        for value in values {
            assert!(
                !value.contains("4242") && !value.contains("hunter2"),
                "an unlisted argument's value is recorded: {value}"
            );
        }
    }
    let prices: Vec<_> = spans.iter().filter(|s| s.name == "price").collect();
    assert_eq!(prices.len(), 2);
    assert!(prices.iter().any(|s| has(&s.attributes, "sku", "\"12\"")));

    let metrics = latest_metrics();
    let charge_name = [("code.function.name", "payments.charge")];
    assert_eq!(
        histogram(&metrics, "dtx.function.duration", &charge_name).0,
        2
    );
    assert_eq!(counter(&metrics, "dtx.function.errors", &charge_name), 1);
    let price_name = [("code.function.name", "price")];
    assert_eq!(
        histogram(&metrics, "dtx.function.duration", &price_name).0,
        2
    );
    assert_eq!(counter(&metrics, "dtx.function.errors", &price_name), 1);
}

// ---------------------------------------------------------------------------------------------
// Idempotency replays and conflicts.

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RefundError(#[from] dtx::idempotency::IdempotencyError);

#[dtx::idempotent(key = key, fingerprint = amount)]
async fn refund(key: &str, amount: u64) -> Result<u64, RefundError> {
    Ok(amount)
}

#[tokio::test]
async fn idempotency_replays_and_conflicts_are_counted() {
    telemetry();
    // Only this test makes idempotent calls.
    let key = dtx::Uuid::now_v7().to_string();
    assert_eq!(refund(&key, 5).await.unwrap(), 5);
    assert_eq!(refund(&key, 5).await.unwrap(), 5, "replayed");
    assert!(
        refund(&key, 6).await.is_err(),
        "the key with another amount"
    );

    let metrics = latest_metrics();
    assert_eq!(counter(&metrics, "dtx.idempotency.replays", &[]), 1);
    assert_eq!(
        counter(
            &metrics,
            "dtx.idempotency.conflicts",
            &[("reason", "key_reused")]
        ),
        1
    );
}

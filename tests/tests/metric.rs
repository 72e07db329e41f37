//! `#[dtx::metric]` (feature `otel`), checked with the SDK's in-memory metric exporter: the call
//! counter with its `outcome`, the duration histogram, constant and argument labels, default
//! names, and the composition with `#[dtx::trace]` in both orders.
//!
//! A test binary of its own: it installs the global meter provider and subscriber, and the
//! tests share them (each measures functions of its own names).

#![allow(
    clippy::unwrap_used,
    clippy::unused_async,
    missing_docs,
    reason = "tests"
)]

use dtx::telemetry::MetricLabel;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;

struct Telemetry {
    spans: InMemorySpanExporter,
    tracer: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter: SdkMeterProvider,
}

/// The global meter provider and subscriber, installed once, before any measured call.
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

fn latest_metrics() -> ResourceMetrics {
    let t = telemetry();
    t.meter.force_flush().unwrap();
    t.metrics.get_finished_metrics().unwrap().pop().unwrap()
}

fn finished_spans() -> Vec<SpanData> {
    let t = telemetry();
    t.tracer.force_flush().unwrap();
    t.spans.get_finished_spans().unwrap()
}

/// The attribute sets of metric `name`'s data points, each with its count (a counter's value,
/// a histogram's number of recordings), sorted.
fn points(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
    let metric = metrics
        .scope_metrics()
        .flat_map(opentelemetry_sdk::metrics::data::ScopeMetrics::metrics)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no metric `{name}`"));
    let labels = |attributes: &mut dyn Iterator<Item = &KeyValue>| {
        let mut labels: Vec<(String, String)> = attributes
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        labels.sort();
        labels
    };
    let mut points: Vec<_> = match metric.data() {
        AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
            .data_points()
            .map(|p| (labels(&mut p.attributes()), p.value()))
            .collect(),
        AggregatedMetrics::F64(MetricData::Histogram(h)) => h
            .data_points()
            .map(|p| (labels(&mut p.attributes()), p.count()))
            .collect(),
        _ => panic!("`{name}` is neither a u64 counter nor an f64 histogram"),
    };
    points.sort();
    points
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn has_metric(metrics: &ResourceMetrics, name: &str) -> bool {
    metrics
        .scope_metrics()
        .flat_map(opentelemetry_sdk::metrics::data::ScopeMetrics::metrics)
        .any(|m| m.name() == name)
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub enum Method {
    Card,
    Transfer,
}

impl MetricLabel for Method {
    fn metric_label(&self) -> &'static str {
        match self {
            Method::Card => "card",
            Method::Transfer => "transfer",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("declined")]
pub struct Declined;

/// `customer` is not a label: only `method` is listed.
#[dtx::metric(
    name = "payments.charge",
    labels(service = "payments", region = "eu"),
    arg_labels(method)
)]
async fn charge(customer: String, method: Method, amount: u64) -> Result<u64, Declined> {
    let _ = customer;
    tokio::task::yield_now().await;
    if amount == 0 {
        return Err(Declined);
    }
    Ok(amount)
}

#[tokio::test]
async fn an_async_fn_counts_calls_by_outcome_and_records_durations() {
    telemetry();
    assert_eq!(charge("ada".into(), Method::Card, 30).await.unwrap(), 30);
    assert_eq!(charge("bob".into(), Method::Card, 5).await.unwrap(), 5);
    assert!(charge("eve".into(), Method::Card, 0).await.is_err());
    assert!(charge("ada".into(), Method::Transfer, 0).await.is_err());

    let metrics = latest_metrics();
    let base = [("service", "payments"), ("region", "eu")];
    let with = |more: &[(&str, &str)]| labels(&[&base[..], more].concat());
    assert_eq!(
        points(&metrics, "payments.charge.calls"),
        [
            (with(&[("method", "card"), ("outcome", "error")]), 1),
            (with(&[("method", "card"), ("outcome", "ok")]), 2),
            (with(&[("method", "transfer"), ("outcome", "error")]), 1),
        ]
    );
    assert_eq!(
        points(&metrics, "payments.charge.duration"),
        [
            (with(&[("method", "card")]), 3),
            (with(&[("method", "transfer")]), 1),
        ]
    );
}

mod pricing {
    use super::Method;

    /// No `Result`: no `outcome`; named after its path.
    #[dtx::metric]
    pub(crate) fn total(lines: &[u64]) -> u64 {
        lines.iter().sum()
    }

    pub(crate) struct Quotes;

    impl Quotes {
        /// A method, with bounded labels of other kinds: `bool`, `Option<enum>` by reference.
        #[dtx::metric(arg_labels(express, method))]
        pub(crate) fn quote(&self, express: bool, method: &Option<Method>) -> Result<u64, String> {
            match method {
                Some(_) if express => Ok(20),
                Some(_) => Ok(10),
                None => Err("no method".into()),
            }
        }
    }
}

#[test]
fn sync_fns_and_methods_take_their_path_as_default_name() {
    telemetry();
    assert_eq!(pricing::total(&[1, 2, 3]), 6);
    assert_eq!(pricing::total(&[]), 0);
    let quotes = pricing::Quotes;
    assert_eq!(quotes.quote(true, &Some(Method::Card)), Ok(20));
    assert_eq!(quotes.quote(false, &Some(Method::Transfer)), Ok(10));
    assert!(quotes.quote(false, &None).is_err());

    let metrics = latest_metrics();
    assert_eq!(
        points(&metrics, "metric.pricing.total.calls"),
        [(vec![], 2)]
    );
    assert_eq!(
        points(&metrics, "metric.pricing.total.duration"),
        [(vec![], 2)]
    );
    assert_eq!(
        points(&metrics, "metric.pricing.Quotes.quote.calls"),
        [
            (
                labels(&[
                    ("express", "false"),
                    ("method", "none"),
                    ("outcome", "error")
                ]),
                1
            ),
            (
                labels(&[
                    ("express", "false"),
                    ("method", "transfer"),
                    ("outcome", "ok")
                ]),
                1
            ),
            (
                labels(&[("express", "true"), ("method", "card"), ("outcome", "ok")]),
                1
            ),
        ]
    );
    assert_eq!(
        points(&metrics, "metric.pricing.Quotes.quote.duration").len(),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// With `#[dtx::trace]`, in both orders.

/// As documented: the metric above, recorded inside the span.
#[dtx::metric(name = "shipping.book", labels(carrier = "dhl"))]
#[dtx::trace(name = "shipping.book", fields(parcels))]
async fn book(parcels: u32) -> Result<u32, Declined> {
    if parcels == 0 {
        return Err(Declined);
    }
    Ok(parcels)
}

/// The other order.
#[dtx::trace(name = "shipping.cancel")]
#[dtx::metric(name = "shipping.cancel")]
fn cancel(parcels: u32) -> Result<u32, Declined> {
    if parcels == 0 {
        return Err(Declined);
    }
    Ok(parcels)
}

#[tokio::test]
async fn composes_with_trace_in_either_order() {
    telemetry();
    assert_eq!(book(2).await.unwrap(), 2);
    assert!(book(0).await.is_err());
    assert_eq!(cancel(1).unwrap(), 1);
    assert!(cancel(0).is_err());

    let metrics = latest_metrics();
    assert_eq!(
        points(&metrics, "shipping.book.calls"),
        [
            (labels(&[("carrier", "dhl"), ("outcome", "error")]), 1),
            (labels(&[("carrier", "dhl"), ("outcome", "ok")]), 1),
        ]
    );
    assert_eq!(
        points(&metrics, "shipping.book.duration"),
        [(labels(&[("carrier", "dhl")]), 2)]
    );
    assert_eq!(
        points(&metrics, "shipping.cancel.calls"),
        [
            (labels(&[("outcome", "error")]), 1),
            (labels(&[("outcome", "ok")]), 1),
        ]
    );
    // `#[dtx::trace]`'s own span and metrics are there too.
    let spans = finished_spans();
    for name in ["shipping.book", "shipping.cancel"] {
        assert_eq!(spans.iter().filter(|s| s.name == name).count(), 2, "{name}");
    }
    assert!(has_metric(&metrics, "dtx.function.duration"));
}

//! The `#[dtx::trace]` rows: a traced no-op function against the same function untraced.
//!
//! - `trace_overhead`: no subscriber (the exporter off): the span is disabled, the clock is
//!   read twice and the metrics go to OpenTelemetry's no-op global meter;
//! - `trace_overhead_otel`: a `tracing-opentelemetry` layer on the SDK, sampling 100%, with a
//!   batch exporter that discards the spans (building, recording and batching every span is
//!   measured; the wire is not).

use crate::{Options, pair_batched, report};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::hint::black_box;
use tracing_subscriber::layer::SubscriberExt as _;

/// Calls per sample: one call is tens of nanoseconds.
const BATCH: u32 = 1000;

/// The baseline: a no-op returning a `Result`.
#[inline(never)]
#[expect(
    clippy::unnecessary_wraps,
    reason = "the signature of the traced twin, whose `Result` is inspected"
)]
fn plain(n: u64) -> Result<u64, std::fmt::Error> {
    Ok(black_box(n))
}

/// The same no-op, traced with one recorded field.
#[inline(never)]
#[dtx::trace(fields(n))]
fn traced(n: u64) -> Result<u64, std::fmt::Error> {
    Ok(black_box(n))
}

/// Drops every span it is given.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

/// `trace_overhead` and `trace_overhead_otel`.
pub(crate) async fn trace_rows(options: &Options) {
    let row = async |options: &Options, name: &str| {
        let row = pair_batched(
            options.iterations,
            BATCH,
            async |i| {
                black_box(traced(black_box(i)).ok());
            },
            async |i| {
                black_box(plain(black_box(i)).ok());
            },
        )
        .await;
        report(options, name, "plain_call", &row);
    };
    if options.wants("trace_overhead") {
        row(options, "trace_overhead").await;
    }
    if options.wants("trace_overhead_otel") {
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Discard)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("dtx-bench")));
        // The bench runs on this thread (the runtime's `block_on`).
        let guard = tracing::subscriber::set_default(subscriber);
        row(options, "trace_overhead_otel").await;
        drop(guard);
        let _ = provider.shutdown();
    }
}

//! Spans, metrics and trace context of the dtx runtime.
//!
//! dtx instruments itself with [`tracing`] spans, always on: any `tracing` subscriber sees them.
//! With the cargo feature **`otel`**, dtx also
//!
//! - records the metrics below through OpenTelemetry's global meter (`opentelemetry::global`;
//!   install a meter provider before the first command runs: instruments are created once);
//! - stores the current span's W3C `traceparent` on commands ([`crate::cqrs::CommandMetadata`]),
//!   events ([`crate::EventMetadata`]) and sagas, and restores it as the parent of the command
//!   and saga-step spans (and of a consumer's span, with [`set_parent`]), so one business
//!   operation is one trace. Spans reach OpenTelemetry through a `tracing-opentelemetry`
//!   layer; [`init`] (feature **`otel-otlp`**) installs one with an OTLP/HTTP exporter.
//!
//! Without the features every function here is an empty inline no-op and dtx has no
//! OpenTelemetry dependency.
//!
//! # Spans
//!
//! | span | where | fields |
//! |---|---|---|
//! | `dtx.command` | [`crate::cqrs::CommandBus::execute_with`] | `command`, `command_id`, `correlation_id`, `outcome` |
//! | `dtx.command.handle` | one attempt of an aggregate command (debug level) | `aggregate`, `aggregate_id`, `attempt` |
//! | `dtx.load` | loading an aggregate: snapshot + later events (debug level) | `aggregate`, `stream`, `version` |
//! | `dtx.append` | appending an aggregate's events (debug level) | `aggregate`, `stream`, `expected`, `events` |
//! | `dtx.saga.step` | one run of a saga step or compensation | `saga`, `saga_id`, `step`, `phase`, `attempt`, `outcome` |
//! | `dtx.idempotency.claim` | claiming an idempotency key (debug level) | `key` (a digest, never the key), `outcome`: `claimed`, `replay`, `in_flight`, `mismatch`, `error` |
//! | `dtx.outbox.claim` | a relay claiming a batch under per-key locks (debug level) | `keys`, `messages` |
//! | `dtx.outbox.publish` | publishing one outbox message, child of the trace stored in its `traceparent` header | `stream`, `message_type` |
//! | the function's name | [`#[dtx::trace]`](crate::trace) | the listed `fields(..)`, `error`, `exception.message`, `otel.status_code` |
//!
//! # Metrics
//!
//! | metric | kind (unit) | attributes | recorded when |
//! |---|---|---|---|
//! | `dtx.commands.executed` | counter | `command` | a command handler ran (any outcome) |
//! | `dtx.commands.failed` | counter | `command`, `outcome` | it returned an error (`outcome`: `invalid`, `rejected`, `conflict`, `not_applicable`, `error`) |
//! | `dtx.command.duration` | histogram (s) | `command` | a command handler ran |
//! | `dtx.append.duration` | histogram (s) | `aggregate` | a repository appended events |
//! | `dtx.append.batch_size` | histogram (events) | `aggregate` | idem |
//! | `dtx.append.conflicts` | counter | `aggregate` | an append met another writer's version |
//! | `dtx.saga.transitions` | counter | `saga`, `status` | a saga started (`running`) or changed status |
//! | `dtx.saga.step.retries` | counter | `saga`, `step` | a failed step or compensation was scheduled again |
//! | `dtx.outbox.lag` | histogram (s) | – | from writing an outbox message to its broker's acknowledgement |
//! | `dtx.outbox.dead_letters` | counter | – | an outbox message was dead-lettered |
//! | `dtx.idempotency.replays` | counter | — | an idempotent call returned a stored result |
//! | `dtx.idempotency.conflicts` | counter | `reason` (`key_reused`, `in_flight`) | an idempotent call was refused |
//! | `dtx.function.duration` | histogram (s) | `code.function.name` | a `#[dtx::trace]` function returned |
//! | `dtx.function.errors` | counter | `code.function.name` | it returned an `Err` |
//! | `<name>.calls` | counter | `labels(..)`, `arg_labels(..)`, `outcome` (`ok`, `error`; for a `Result`) | a [`#[dtx::metric]`](crate::metric) function returned |
//! | `<name>.duration` | histogram (s) | `labels(..)`, `arg_labels(..)` | idem |
//! | `dtx.projection.events` | counter | `projection` | a projection committed a batch |
//! | `dtx.projection.lag` | histogram (s) | `projection` | ... from its oldest event's commit |
//! | `dtx.projection.lag_events` | histogram | `projection` | ... with this many feed events read after it |
//! | `dtx.projection.failures` | counter | `projection` | a projection stopped at an event |
//! | `dtx.inbox.messages` | counter | `consumer`, `outcome` | a consumer handled a delivery (`applied`, `ignored`, `duplicate`, `failed`, `poison`) |
//! | `dtx.inbox.duration` | histogram (s) | `consumer` | one delivery, handled and committed with its inbox record |
//! | `dtx.inbox.dead_letters` | counter | `consumer` | a consumer gave up on a message |
//!
//! # Trace context
//!
//! The W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) travels in
//! [`crate::cqrs::CommandMetadata::traceparent`], [`crate::EventMetadata::traceparent`] (stored
//! with every event, so the outbox and consumers can continue the trace) and, for a saga, in
//! its record's `received` map under [`SAGA_TRACEPARENT`]: every step's span continues the
//! trace of the operation that started the saga.

pub(crate) mod call_metrics;
mod metrics;
#[cfg(feature = "otel-otlp")]
mod otlp;

pub use call_metrics::MetricLabel;
pub use metrics::*;
#[cfg(feature = "otel-otlp")]
pub use otlp::{InitError, TelemetryGuard, init};

/// The key of a saga record's `received` map holding the `traceparent` of the operation that
/// started the saga.
pub const SAGA_TRACEPARENT: &str = "dtx.traceparent";

/// The W3C `traceparent` of the current span, if it belongs to an OpenTelemetry trace (feature
/// `otel` and a `tracing-opentelemetry` layer); `None` otherwise.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes the span stored as `traceparent` the parent of `span`: a consumer of an event, or a
/// saga step, continues the trace that produced it. A malformed or absent `traceparent` leaves
/// `span` as it is. Call it before the span is first entered. A no-op without feature `otel`.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(parent) = traceparent
        .filter(|_| !span.is_disabled())
        .and_then(parse_traceparent)
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        // Already the contextual parent (metadata made inside the caller's span): keep the
        // local link rather than marking it remote.
        let current = tracing::Span::current().context();
        if current.span().span_context().span_id() == parent.span_id()
            && current.span().span_context().trace_id() == parent.trace_id()
        {
            return;
        }
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// Whether `traceparent` is a well-formed W3C `traceparent` (version 00) with non-zero ids.
#[must_use]
pub fn is_traceparent(traceparent: &str) -> bool {
    split_traceparent(traceparent).is_some()
}

/// `(trace id, span id, flags)` of a version-00 `traceparent`.
fn split_traceparent(text: &str) -> Option<(u128, u64, u8)> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.next().is_some()
        || version != "00"
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let span = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span, flags))
}

#[cfg(feature = "otel")]
fn parse_traceparent(text: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let (trace, span, flags) = split_traceparent(text)?;
    Some(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_syntax() {
        assert!(super::is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!super::is_traceparent(bad), "{bad}");
        }
    }
}
